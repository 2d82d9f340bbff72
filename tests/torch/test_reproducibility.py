"""Bit-reproducibility through the DDP hook and through DistributedOptimizer: two identical runs with a forced codec and random backward-pass
delays (so gradients reach the engine with different timing) must end with identical parameters. Fails when
fusion follows arrival timing (each run fuses different parameters into a quantized bucket)."""
import re

import pytest

from mpi_helpers import assert_ok, run_workers


# int4 shares int8's stochastic-rounding and residual paths (tests/test_codecs.py checks each codec's determinism).
@pytest.mark.parametrize("path,codec", [("hook", "int8"), ("optimizer", "int8")])
def test_forced_codec_is_bit_reproducible(path: str, codec: str) -> None:
    env = {"NEPTUNE_RT_ROUNDING": "stochastic", "NEPTUNE_RT_SEED": "7"}
    sums = []
    for _ in range(2):
        proc = run_workers("repro_worker.py", 3, codec, "12", path, timeout=180, env=env)
        assert_ok(proc, 3)
        found = re.findall(r"^CHECKSUM (\w+) loss (\S+)", proc.stdout, re.M)
        assert len(found) == 1, proc.stdout
        sums.append(found[0])
    assert sums[0] == sums[1], f"two identical runs ended differently: {sums}"
