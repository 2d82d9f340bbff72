"""The scheduler under real mpirun ranks (workers/schedule_worker.py): exact weighted gradients with unequal
local batches and accumulation, identical decisions on every rank (plan hashes), checkpoint round trip
mid-run, memory probing with a memory cap on one rank only, statistics rows gathered at once and through
StatsPipe (one step late, around a gradient all-reduce)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mpi_helpers import assert_ok, run_mpi  # noqa: E402

WORKER = Path(__file__).parent / "workers" / "schedule_worker.py"
ENV = {"NEPTUNE_RT_TIMEOUT_SECONDS": "60", "NEPTUNE_RT_STALL_WARNING_SECONDS": "30"}


def test_weighted_gradient_equals_full_batch_gradient():
    assert_ok(run_mpi(WORKER, 4, "weighted", env=ENV), 4)


def test_identical_decisions_and_checkpoint_round_trip():
    assert_ok(run_mpi(WORKER, 4, "decisions", env=ENV), 4)


def test_memory_probe_with_cap_on_one_rank():
    assert_ok(run_mpi(WORKER, 3, "probe", "1", env=ENV), 3)


def test_memory_probe_stops_every_rank_when_one_fails_otherwise():
    assert_ok(run_mpi(WORKER, 3, "probe_error", env=ENV, timeout=120), 3)


def test_statistics_rows_gathered_bit_for_bit():
    assert_ok(run_mpi(WORKER, 4, "gather", env=ENV), 4)


def test_stats_pipe_delivers_the_previous_steps_rows():
    assert_ok(run_mpi(WORKER, 4, "pipe", env=ENV), 4)
