"""Compressed all-reduce under real mpirun (1..5 ranks): each test launches
tests/workers/compressed_allreduce_worker.py, which checks every case on every rank and aborts on a failure.
"""

from __future__ import annotations

import re

import pytest

from mpi_helpers import assert_ok, run_mpi

WORKER = "compressed_allreduce_worker.py"


def _passed(proc, np_: int, at_least: int) -> None:
    assert_ok(proc, np_)
    counts = [int(c) for c in re.findall(r"^OK rank \d+: (\d+) cases", proc.stdout, re.M)]
    assert len(counts) == np_ and min(counts) >= at_least, proc.stdout[-3000:]


@pytest.mark.parametrize("algo", ["two_phase", "ring"])
@pytest.mark.parametrize("np_", [1, 2, 3, 4, 5])
def test_sweep_codecs_counts_segments(np_: int, algo: str) -> None:
    """All codecs x counts {1, n-1, 7, 1000, 4099} x (block 256, default segments | block 8, 64-byte segments):
    error within the stated bound of the exact fp64 sum, bitwise equal on all ranks, exact wire bytes."""
    _passed(run_mpi(WORKER, np_, "--algo", algo, "--mode", "sweep", timeout=300), np_, at_least=80)


@pytest.mark.parametrize("algo", ["two_phase", "ring"])
def test_error_feedback_bookkeeping(algo: str) -> None:
    """Over 500 steps: sum of results == sum of exact sums - final residuals; residuals within the bound of
    each codec's error model, and their RMS does not grow between the first and the second half."""
    _passed(run_mpi(WORKER, 4, "--algo", algo, "--mode", "ef", timeout=300), 4, at_least=6)


def test_bad_arguments_rejected() -> None:
    proc = run_mpi(WORKER, 2, "--mode", "args", timeout=120)
    _passed(proc, 2, at_least=8)
    assert "invalid block size 100" in proc.stdout


@pytest.mark.parametrize("algo", ["two_phase", "ring"])
def test_codec_mismatch_fails_every_rank_without_hanging(algo: str) -> None:
    """One rank with another codec: every rank raises (size check, truncation or the 5 s deadline)."""
    proc = run_mpi(WORKER, 3, "--algo", algo, "--mode", "mismatch", timeout=120)
    _passed(proc, 3, at_least=1)
    assert proc.stdout.count("failed as it should") == 3, proc.stdout


def test_default_algorithm_by_world_size():
    # NEPTUNE_RT_COMPRESSED_ALGORITHM=auto: the requantizing ring up to 8 ranks, the two-phase above.
    from neptune_rt import _C

    assert [_C.choose_compressed_algorithm(n) for n in (1, 2, 8, 9, 64)] == ["ring"] * 3 + ["two_phase"] * 2
