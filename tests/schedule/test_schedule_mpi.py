"""The scheduler under real mpirun ranks (workers/schedule_worker.py): exact weighted gradients with unequal
local batches and accumulation, identical decisions on every rank (plan hashes), checkpoint round trip
mid-run, memory probing with a memory cap on one rank only, statistics rows gathered at once and through
StatsPipe (one step late, around a gradient all-reduce). The modes share two launches (4 ranks, 3 ranks):
each launch costs every rank seconds of start-up; each test reads its own mode's lines."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mpi_helpers import MpiResult, assert_part_passed, run_mpi  # noqa: E402

WORKER = Path(__file__).parent / "workers" / "schedule_worker.py"
ENV = {"NEPTUNE_RT_TIMEOUT_SECONDS": "60", "NEPTUNE_RT_STALL_WARNING_SECONDS": "30"}


@pytest.fixture(scope="module")
def four_ranks() -> MpiResult:
    return run_mpi(WORKER, 4, "weighted", "decisions", "gather", "pipe", env=ENV, timeout=300)


@pytest.fixture(scope="module")
def three_ranks() -> MpiResult:
    return run_mpi(WORKER, 3, "probe:1", "probe_error", env=ENV, timeout=240)


def assert_mode_ok(proc: MpiResult, mode: str, np: int) -> None:
    """Every rank printed 'OK MODE rank R': the mode passed, whatever a later mode of the launch did."""
    assert_part_passed(proc, f"OK {mode} rank ", np)


def test_weighted_gradient_equals_full_batch_gradient(four_ranks):
    assert_mode_ok(four_ranks, "weighted", 4)


def test_identical_decisions_and_checkpoint_round_trip(four_ranks):
    assert_mode_ok(four_ranks, "decisions", 4)


def test_statistics_rows_gathered_bit_for_bit(four_ranks):
    assert_mode_ok(four_ranks, "gather", 4)


def test_stats_pipe_delivers_the_previous_steps_rows(four_ranks):
    assert_mode_ok(four_ranks, "pipe", 4)
    assert four_ranks.returncode == 0, four_ranks.output[-8000:]  # the launch's last mode: a clean shut-down


def test_memory_probe_with_cap_on_one_rank(three_ranks):
    assert_mode_ok(three_ranks, "probe", 3)


def test_memory_probe_stops_every_rank_when_one_fails_otherwise(three_ranks):
    assert_mode_ok(three_ranks, "probe_error", 3)
    assert three_ranks.returncode == 0, three_ranks.output[-8000:]
