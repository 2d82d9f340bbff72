"""Bit-reproducibility through the DDP hook and through DistributedOptimizer: two identical runs with a forced codec
and random backward-pass delays (so gradients reach the engine with different timing) must end with identical
parameters. Fails when fusion follows arrival timing (each run fuses different parameters into a quantized
bucket). Each run trains both paths in turn in one launch (a launch costs every rank seconds of start-up)."""
import re

import pytest

from mpi_helpers import assert_ok, run_workers

PATHS = ["hook", "optimizer"]


# int4 shares int8's stochastic-rounding and residual paths (tests/test_codecs.py checks each codec's determinism).
@pytest.fixture(scope="module")
def two_runs_int8() -> list[dict[str, tuple[str, str]]]:
    """Per run: path -> (parameters' checksum, last loss)."""
    env = {"NEPTUNE_RT_ROUNDING": "stochastic", "NEPTUNE_RT_SEED": "7"}
    runs = []
    for _ in range(2):
        proc = run_workers("repro_worker.py", 3, "int8", "12", *PATHS, timeout=240, env=env)
        assert_ok(proc, 3)
        found = re.findall(r"^CHECKSUM (\w+) (\w+) loss (\S+)", proc.stdout, re.M)
        assert [path for path, _, _ in found] == PATHS, proc.stdout
        runs.append({path: (digest, loss) for path, digest, loss in found})
    return runs


@pytest.mark.parametrize("path", PATHS)
def test_forced_codec_is_bit_reproducible(two_runs_int8, path: str) -> None:
    first, second = (run[path] for run in two_runs_int8)
    assert first == second, f"{path}: two identical runs ended differently: {first} vs {second}"
