"""Compression: the compressors in-process, and load_digits training under mpirun where every compression
mode must land within 1 point of dense accuracy. Engine codecs run forced (no cost-model fallback to dense),
and are skipped where the engine lacks them."""
import pytest
import torch

from neptune_rt import engine
from neptune_rt.torch import Compression
from neptune_rt.torch.compression import compressor_for

from mpi_helpers import assert_ok, run_workers

CAST = ["fp16", "bf16"]
ENGINE_CODECS = ["int8", "int4", "onebit"]


@pytest.mark.parametrize("name,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_cast_compressors_round_trip(name: str, dtype: torch.dtype) -> None:
    comp = getattr(Compression, name)
    x = torch.randn(100)
    wire, ctx = comp.compress(x)
    assert wire.dtype == dtype and comp.codec == "none"
    back = comp.decompress(wire, ctx)
    assert back.dtype == torch.float32
    assert torch.allclose(back, x, rtol=1e-2 if dtype == torch.bfloat16 else 1e-3)
    ints = torch.arange(5)
    assert comp.compress(ints)[0] is ints  # integers travel as they are


@pytest.mark.parametrize("codec", ENGINE_CODECS)
def test_engine_codecs_pass_through_or_name_the_missing_codec(codec: str) -> None:
    comp = compressor_for(codec)
    assert comp.codec == codec
    x = torch.randn(10)
    if codec in engine.CODECS:
        assert comp.compress(x)[0] is x
    else:
        with pytest.raises(RuntimeError, match=f"'{codec}' is not available"):
            comp.compress(x)


def test_unknown_codec_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown codec 'int3'"):
        compressor_for("int3")
    with pytest.raises(ValueError, match="forced.. takes an engine codec"):
        Compression.forced("fp16")


def test_forced_codec_is_not_adaptive() -> None:
    forced = Compression.forced("int8")
    assert forced.codec == "int8" and not forced.adaptive and Compression.int8.adaptive


@pytest.fixture(scope="module")
def digits_accuracy() -> dict[str, float]:
    pytest.importorskip("sklearn")
    modes = ["none"] + CAST + [f"forced:{c}" for c in ENGINE_CODECS if c in engine.CODECS]
    proc = run_workers("digits_worker.py", 4, *modes, timeout=150)
    assert_ok(proc, 4)
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("ACC")]
    acc = {row[1]: float(row[2]) for row in rows}
    checksum = {row[1]: float(row[4]) for row in rows}
    assert set(acc) == set(modes), proc.stdout
    # Compression must really have been on: the trained parameters differ from dense ones.
    assert all(checksum[m] != checksum["none"] for m in modes if m != "none"), proc.stdout
    return acc


def test_dense_training_learns_digits(digits_accuracy: dict[str, float]) -> None:
    assert digits_accuracy["none"] > 90, digits_accuracy


ONEBIT_XFAIL = pytest.mark.xfail(
    reason="known limitation of scaled-sign (EF-signSGD) compression at block 256: the sign compressor only "
           "contracts by delta = |p|_1^2/(d |p|_2^2) >= 1/d, so error feedback bounds the residual at up to ~2d|g| "
           "when it concentrates on a few coordinates (seen: per-call error 0.8 -> 2.9 over 320 calls of a fixed "
           "input); with momentum 0.9 training ends near 30%. Needs momentum-aware compression (1-bit Adam style).",
    strict=True)


@pytest.mark.parametrize("mode", CAST + ["forced:int8", "forced:int4", pytest.param("forced:onebit",
                                                                                      marks=ONEBIT_XFAIL)])
def test_compressed_training_within_one_point_of_dense(mode: str, digits_accuracy: dict[str, float]) -> None:
    if mode not in digits_accuracy:
        pytest.skip(f"codec {mode!r} is not in this engine build (neptune_rt.engine.CODECS)")
    assert abs(digits_accuracy[mode] - digits_accuracy["none"]) <= 1.0, digits_accuracy
