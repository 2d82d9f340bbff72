"""Disagreeing ranks get a clear error, not a hang (short NEPTUNE_RT_TIMEOUT_SECONDS)."""
import time

from mpi_helpers import run_workers


def test_mismatched_parameters_and_lone_step_fail_clearly() -> None:
    start = time.monotonic()
    proc = run_workers("mismatch_worker.py", 3, timeout=90, env={"NEPTUNE_RT_TIMEOUT_SECONDS": "4"})
    elapsed = time.monotonic() - start
    out = proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    # Different parameter sets: a ValueError on every rank, listing what differs.
    mismatches = [line for line in lines if line.startswith("MISMATCH")]
    assert len(mismatches) == 3, out[-6000:]
    assert "parameters differ across ranks" in out and "2.weight:(4, 4)" in out, out[-6000:]
    # A lone step: rank 0 learns which tensor nobody else submitted, and the job ends non-zero.
    stalled = [line for line in lines if line.startswith("STALLED")]
    assert len(stalled) == 1 and stalled[0].startswith("STALLED rank 0 step 1"), out[-6000:]
    assert "grad.1." in out[out.index("STALLED"):], out[-6000:]
    assert proc.returncode != 0, out[-6000:]
    assert elapsed < 60, f"took {elapsed:.0f} s to fail"
