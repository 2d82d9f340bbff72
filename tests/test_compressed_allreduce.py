"""Compressed all-reduce under real mpirun (1..5 ranks): each test launches
tests/workers/compressed_allreduce_worker.py, which checks every case on every rank and aborts on a failure.
"""

from __future__ import annotations

import re

import pytest

from mpi_helpers import WORKERS, mpirun_path, run_mpi

WORKER = WORKERS / "compressed_allreduce_worker.py"

pytestmark = pytest.mark.skipif(mpirun_path() is None, reason="mpirun not installed (run `make build`)")


def _passed(result, at_least: int) -> None:
    assert result.returncode == 0, result.output
    m = re.search(r"PASS (\d+) cases", result.output)
    assert m, result.output
    assert int(m.group(1)) >= at_least, result.output


@pytest.mark.parametrize("algo", ["two_phase", "ring"])
@pytest.mark.parametrize("nprocs", [1, 2, 3, 4, 5])
def test_sweep_codecs_counts_segments(nprocs: int, algo: str) -> None:
    """All codecs x counts {1, n-1, 7, 1000, 4099} x (block 256, default segments | block 8, 64-byte segments):
    error within the stated bound of the exact fp64 sum, bitwise equal on all ranks, exact wire bytes."""
    _passed(run_mpi(WORKER, nprocs, "--algo", algo, "--mode", "sweep", timeout=240), at_least=80)


@pytest.mark.parametrize("algo", ["two_phase", "ring"])
def test_error_feedback_bookkeeping(algo: str) -> None:
    """Over 12 steps: sum of results == sum of exact sums - final residuals; residuals stay bounded."""
    _passed(run_mpi(WORKER, 4, "--algo", algo, "--mode", "ef", timeout=240), at_least=6)


def test_bad_arguments_rejected() -> None:
    result = run_mpi(WORKER, 2, "--mode", "args", timeout=120)
    _passed(result, at_least=8)
    assert "invalid block size 100" in result.output
