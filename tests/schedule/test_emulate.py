"""The emulated slowdown (--emulate-slowdown, benchmarks/hetero.py): how long a rank sleeps in each mode, and
bad factor lists. In-process; time.sleep is recorded, not slept."""
import pytest

from neptune_rt.schedule import emulate
from neptune_rt.schedule.emulate import EmulatedSlowdown, parse_factors, slowdown_sleep


@pytest.fixture
def slept(monkeypatch):
    calls = []
    monkeypatch.setattr(emulate.time, "sleep", calls.append)
    return calls


def test_measured_mode_sleeps_factor_minus_one_times_the_compute(slept):
    s = EmulatedSlowdown(3.0)
    assert s.before_compute(10) == 0.0 and slept == []  # nothing measured yet
    s.after_compute(10, 0.02)                           # 2 ms per sample
    assert s.before_compute(5) == pytest.approx(2 * 0.002 * 5) and slept == [pytest.approx(0.02)]
    s.after_compute(10, 0.04)                           # EWMA 0.8 * 2 ms + 0.2 * 4 ms = 2.4 ms
    assert s.before_compute(10) == pytest.approx(2 * 0.0024 * 10)
    assert s.emulated_compute(10) is None
    assert EmulatedSlowdown(1.0).before_compute(10) == 0.0


def test_fixed_mode_emulates_the_whole_compute(slept):
    s = EmulatedSlowdown(4.0, per_sample_s=0.001)
    s.after_compute(10, 5.0)  # the real time does not matter in this mode
    assert s.before_compute(8) == pytest.approx(0.032) == s.emulated_compute(8)
    assert slowdown_sleep(2.0, 3, 0.01, 0.005) == pytest.approx(0.065) and slept[-1] == pytest.approx(0.065)


def test_state_round_trip(slept):
    a = EmulatedSlowdown(2.0)
    a.after_compute(4, 0.004)
    b = EmulatedSlowdown(2.0)
    b.load_state_dict(a.state_dict())
    assert b.before_compute(4) == a.before_compute(4) == pytest.approx(0.004)


@pytest.mark.parametrize("text, world, message", [
    ("1,1,2", 4, "names 3 ranks but the job has 4"),
    ("1,x,1,1", 4, "expected comma-separated numbers"),
    ("1,0.5", 2, "every factor must be >= 1"),
])
def test_bad_factors(text, world, message):
    with pytest.raises(ValueError, match=message):
        parse_factors(text, world)
    assert parse_factors("1,1,1,2", 4) == [1.0, 1.0, 1.0, 2.0]
