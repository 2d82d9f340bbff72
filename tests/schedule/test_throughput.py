"""LinearTimeModel: recovers a and c from noisy timings with varying batch sizes, ignores isolated outliers,
and resets within a few steps when the rank really changes speed."""
import numpy as np
import pytest

from neptune_rt.schedule.throughput import LinearTimeModel


def test_fit_recovers_line_and_ignores_outliers():
    rng = np.random.default_rng(0)
    m = LinearTimeModel()
    for step in range(200):
        b = int(rng.integers(20, 80))
        t = 0.005 + 0.001 * b + rng.normal(0, 0.0002)
        if step % 17 == 5:
            t *= 10  # a page-fault storm or a noisy neighbour for one step
        m.observe(b, t)
    assert m.c == pytest.approx(0.001, rel=0.1)
    assert m.a == pytest.approx(0.005, abs=0.0015)
    assert m.predict(64) == pytest.approx(0.005 + 0.064, rel=0.03)


def test_one_size_gives_proportional_model_and_slowdown_resets():
    m = LinearTimeModel()
    for _ in range(20):
        m.observe(64, 0.064)
    assert m.predict(64) == pytest.approx(0.064, rel=1e-6)
    resets = [m.observe(64, 0.256) for _ in range(5)]
    assert any(resets[:4]), "a sustained 4x slowdown must reset the fit within 4 steps"
    assert m.predict(64) == pytest.approx(0.256, rel=0.02)


def test_state_round_trip():
    m = LinearTimeModel()
    for b in (10, 20, 30, 15):
        m.observe(b, 0.002 + 0.0005 * b)
    m2 = LinearTimeModel()
    m2.load_state_dict(m.state_dict())
    m.observe(25, 0.02)
    m2.observe(25, 0.02)
    assert (m.a, m.c) == (m2.a, m2.c)
