"""Completion callbacks run outside the engine's cycle lock (waiting from one works; a slow one does not stall
communication; shutdown from one raises at once), bad arguments are refused at enqueue in the caller, and one
rank's engine failure stops every rank in the next cycle. Real mpirun; workers/engine_callbacks_worker.py."""
import pytest

from mpi_helpers import assert_ok, run_mpi


@pytest.mark.parametrize("np_", [2, 3])
def test_callbacks_run_outside_the_cycle_lock(np_):
    assert_ok(run_mpi("engine_callbacks_worker.py", np_, "callbacks", timeout=120), np_)


def test_bad_arguments_are_refused_at_enqueue():
    env = {"NEPTUNE_RT_TIMEOUT_SECONDS": "20"}
    assert_ok(run_mpi("engine_callbacks_worker.py", 3, "validation", timeout=90, env=env), 3)


def test_engine_failure_on_one_rank_reaches_every_rank():
    env = {"NEPTUNE_RT_TIMEOUT_SECONDS": "30"}
    proc = run_mpi("engine_callbacks_worker.py", 3, "failure", timeout=90, env=env)
    oks = [line for line in proc.stdout.splitlines() if line.startswith("OK")]
    assert len(oks) == 3 and proc.stdout.count("FAILED-FAST") == 3, proc.output
    # After any engine failure the exit handler aborts the job, so it ends non-zero (docs/failures.md).
    assert proc.returncode != 0 and "aborting the MPI job at exit after an earlier failure" in proc.output, \
        proc.output
