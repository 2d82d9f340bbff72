"""Codecs (csrc/codecs via neptune_rt.codecs) against the numpy reference: exact bytes for round-to-nearest,
bitwise for stochastic rounding, stated error bounds, unbiasedness, error feedback, and payload validation
(malformed / truncated payloads fuzzed with hypothesis)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neptune_rt import _C, codecs
from neptune_rt.codecs import reference as ref

CODECS = list(codecs.CODECS)
BLOCK_CODECS = ["int8", "int4", "onebit"]


def test_codec_list_and_summable() -> None:
    assert CODECS == list(ref.CODECS)
    assert [c for c in CODECS if codecs.is_summable(c)] == ["none", "fp16", "bf16"]


def _data(n: int, seed: int) -> np.ndarray:
    """Blocks of very different magnitudes plus awkward values (zeros, -0, ties, tiny, large)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * np.exp(rng.uniform(-8, 8, size=n // 64 + 1)).repeat(64)[:n]
    x = x.astype(np.float32)
    if n > 40:
        x[:8] = 0.0
        x[8:16] = -0.0
        x[16:24] = np.float32(1e-35)
        x[24] = np.float32(60000.0)
        x[25] = np.float32(-3e-6)
        x[26:34] = np.arange(8, dtype=np.float32) - 3.5  # exact .5 ties after scaling in some blocks
    return x


@pytest.fixture(params=["simd", "portable"])
def cpu_path(request):
    """Run a test on the AVX2/F16C paths (where the CPU has them) and on the portable loops."""
    _C._codec_simd(request.param == "simd")
    yield request.param
    _C._codec_simd(True)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("block", [8, 256, 1024])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 255, 257, 1000, 5003])
def test_matches_reference(codec: str, rounding: str, block: int, n: int, cpu_path: str) -> None:
    x = _data(n, seed=n + block)
    r_ours = np.random.default_rng(1).standard_normal(n).astype(np.float32)
    r_ref = r_ours.copy()
    kw = dict(block=block, rounding=rounding, seed=123, step=9, rank=3, index_base=1000)
    ours = codecs.encode(codec, x, r_ours, **kw)
    want = ref.encode(codec, x, r_ref, **kw)
    assert ours.size == codecs.payload_bytes(codec, n, block) == ref.payload_bytes(codec, n, block)
    np.testing.assert_array_equal(ours, want)
    np.testing.assert_array_equal(_bits(r_ours), _bits(r_ref))
    dec = codecs.decode(ours)
    np.testing.assert_array_equal(_bits(dec), _bits(ref.decode(want)))
    base = np.linspace(-1, 1, n).astype(np.float32)
    np.testing.assert_array_equal(_bits(codecs.decode_add(ours, base.copy())), _bits(base + dec))
    # Without a residual the payload is the same quantization of x itself.
    np.testing.assert_array_equal(codecs.encode(codec, x, **kw)[24:], ref.encode(codec, x, **kw)[24:])


def test_fp16_bf16_special_values_match_numpy(cpu_path: str) -> None:
    x = np.array([65504, 65519, 65520, 1e6, -1e6, 6e-8, 2.9e-8, 1e-10, np.inf, -np.inf, 0.0, -0.0, 1 / 3] * 3,
                 np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).astype(np.float32)
    np.testing.assert_array_equal(codecs.decode(codecs.encode("fp16", x)), want)
    for codec in ("fp16", "bf16"):
        with_nan = x.copy()
        with_nan[5] = np.nan
        got = codecs.decode(codecs.encode(codec, with_nan))
        want = codecs.decode(codecs.encode(codec, x))
        assert np.isnan(got[5])
        np.testing.assert_array_equal(np.delete(got, 5), np.delete(want, 5))
        np.testing.assert_array_equal(codecs.encode(codec, with_nan), ref.encode(codec, with_nan))
    np.testing.assert_array_equal(codecs.encode("bf16", x), ref.encode("bf16", x))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("block", [8, 64, 256])
def test_error_within_stated_bound(codec: str, rounding: str, block: int) -> None:
    for seed in range(5):
        x = _data(3000, seed)
        x[np.abs(x) > 60000] = 1.0  # fp16's bound holds inside its range
        err = np.abs(codecs.decode(codecs.encode(codec, x, block=block, rounding=rounding, seed=seed))
                     .astype(np.float64) - x)
        bound = codecs.error_bound(codec, x, block=block, rounding=rounding)
        assert (err <= bound).all(), (np.argmax(err - bound), (err - bound).max())


def test_error_bound_is_tight_enough_to_fail() -> None:
    """The int8 round-to-nearest bound is half a level: a one-level error must exceed it."""
    x = np.linspace(-1, 1, 256).astype(np.float32)
    bound = codecs.error_bound("int8", x)
    assert (bound < 1 / 127).all() and (bound >= 0.5 / 127).all()


@pytest.mark.parametrize("codec", ["int8", "int4"])
def test_stochastic_rounding_is_unbiased(codec: str) -> None:
    levels = 127 if codec == "int8" else 7
    x = np.linspace(-1, 1, 512).astype(np.float32)
    x[0] = 1.0  # absmax 1 -> scale 1/levels in every block
    x[256] = -1.0
    scale = 1.0 / levels
    trials = 400
    mean_sr = np.zeros(x.size)
    mean_rtn = codecs.decode(codecs.encode(codec, x)).astype(np.float64)
    for s in range(trials):
        mean_sr += codecs.decode(codecs.encode(codec, x, rounding="stochastic", seed=s))
    mean_sr /= trials
    # Each draw is within one level, so its std is <= scale/2: 5 sigma of the mean of 400 draws.
    tol = 5 * (scale / 2) / np.sqrt(trials)
    assert np.abs(mean_sr - x).max() < tol
    assert np.abs(mean_rtn - x).max() > 2 * tol  # rounding to nearest is biased here: the check has teeth


def test_stochastic_rounding_reproducible_and_keyed() -> None:
    x = _data(2048, 3)
    a = codecs.encode("int8", x, rounding="stochastic", seed=1, step=2, rank=3)
    np.testing.assert_array_equal(a, codecs.encode("int8", x, rounding="stochastic", seed=1, step=2, rank=3))
    for other in (dict(seed=2, step=2, rank=3), dict(seed=1, step=3, rank=3), dict(seed=1, step=2, rank=4)):
        assert not np.array_equal(a, codecs.encode("int8", x, rounding="stochastic", **other))
    # The stream is indexed by absolute element index: encoding a block-aligned suffix with index_base=k
    # draws the same numbers as the whole buffer does there.
    k = 1024
    tail = codecs.encode("int8", x[k:], rounding="stochastic", seed=1, step=2, rank=3, index_base=k)
    np.testing.assert_array_equal(codecs.decode(tail), codecs.decode(a)[k:])


@pytest.mark.parametrize("codec", CODECS)
def test_error_feedback_tracks_sum_and_stays_bounded(codec: str) -> None:
    rng = np.random.default_rng(0)
    n, steps = 2000, 50
    r = np.zeros(n, np.float32)
    sum_g = np.zeros(n)
    sum_d = np.zeros(n)
    gmax = 0.0
    for t in range(steps):
        g = (rng.standard_normal(n) * 0.01 + 0.002).astype(np.float32)  # a small bias: EF must keep it
        gmax = max(gmax, float(np.abs(g).max()))
        sum_g += g
        before = r + g
        sum_d += codecs.decode(codecs.encode(codec, g, r, block=64, step=t))
        # r is exactly what this step failed to send: bounded by one quantization of (r + g)
        assert (np.abs(r) <= codecs.error_bound(codec, before, block=64) + 1e-12).all()
    # Telescoping: sum of decoded updates == sum of gradients - final residual (up to fp32 rounding).
    np.testing.assert_allclose(sum_d, sum_g - r, atol=steps * gmax * 1e-5)
    assert np.abs(r).max() <= 4 * gmax + 1e-9


# ---------------------------------------------------------------- payload validation
def _valid(codec: str = "int8", n: int = 100, block: int = 16) -> bytearray:
    return bytearray(codecs.encode(codec, _data(n, 1), block=block))


def _rejects(payload, match: str, dst_n: int | None = None) -> None:
    arr = np.frombuffer(bytes(payload), np.uint8)
    with pytest.raises(ValueError, match=match):
        if dst_n is None:
            codecs.decode(arr)
        else:
            codecs.decode(arr, np.empty(dst_n, np.float32))


def _patch(p: bytearray, fmt: str, offset: int, value) -> bytearray:
    q = bytearray(p)
    struct.pack_into(fmt, q, offset, value)
    return q


def test_malformed_headers_rejected_with_clear_messages() -> None:
    p = _valid()
    _rejects(p[:10], "truncated payload: 10 bytes is shorter than the 24-byte header")
    _rejects(p[:-4], "truncated payload")
    _rejects(p + b"\0\0\0\0", "oversized payload")
    _rejects(_patch(p, "<I", 0, 0x12345678), "not a codec payload")
    _rejects(_patch(p, "<B", 4, 2), "format version 2 is not supported")
    _rejects(_patch(p, "<B", 5, 9), "unknown codec id 9")
    _rejects(_patch(p, "<B", 6, 0x80), "unknown flag bits")
    _rejects(_patch(p, "<B", 7, 1), "reserved")
    _rejects(_patch(p, "<I", 20, 1), "reserved")
    _rejects(_patch(p, "<Q", 8, 101), "truncated payload")
    _rejects(_patch(p, "<Q", 8, 2**62), "above the limit")
    _rejects(_patch(p, "<I", 16, 12), "invalid block size 12")
    _rejects(_patch(p, "<I", 16, 0), "invalid block size 0")
    _rejects(_patch(_valid("fp16"), "<I", 16, 8), "block size 8 \\(must be 0\\)")
    _rejects(_patch(_valid("onebit"), "<B", 6, 1), "claims stochastic rounding")
    _rejects(p, "destination has 99", dst_n=99)
    odd = _valid("int4", n=3, block=8)
    assert len(odd) % 4 == 0
    odd[-1] = 1  # padding must stay zero
    _rejects(odd, "padding byte")


def test_encode_argument_errors() -> None:
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="invalid block size 100"):
        codecs.encode("int8", x, block=100)
    with pytest.raises(ValueError, match="unknown codec 'int3'"):
        codecs.encode("int3", x)
    with pytest.raises(ValueError, match="float32"):
        codecs.encode("int8", x.astype(np.float64))
    with pytest.raises(ValueError, match="residual has 9"):
        codecs.encode("int8", x, np.zeros(9, np.float32))
    with pytest.raises(ValueError, match="unknown rounding"):
        codecs.encode("int8", x, rounding="up")


def test_misaligned_payload_decodes_the_same() -> None:
    p = codecs.encode("int4", _data(999, 2), block=32)
    shifted = np.zeros(p.size + 1, np.uint8)
    shifted[1:] = p
    np.testing.assert_array_equal(codecs.decode(shifted[1:]), codecs.decode(p))


@settings(max_examples=300, deadline=None)
@given(codec=st.sampled_from(CODECS), n=st.integers(0, 300),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.integers(-8, 8))
def test_fuzzed_payloads_never_crash(codec: str, n: int, edits, cut: int) -> None:
    """Random byte edits and length changes: decode either raises ValueError or returns n finite-or-not
    floats; it never reads out of bounds (a crash would kill the test process)."""
    p = bytearray(codecs.encode(codec, _data(n, n), block=8))
    for pos, val in edits:
        p[pos % len(p)] = val
    if cut < 0:
        p = p[:cut]
    else:
        p = p + bytes(cut)
    try:
        out = codecs.decode(np.frombuffer(bytes(p), np.uint8))
    except ValueError:
        return
    assert out.dtype == np.float32 and out.size == codecs.payload_header(np.frombuffer(bytes(p), np.uint8))["count"]


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=0, max_size=200))
def test_random_bytes_rejected_or_decoded(raw: bytes) -> None:
    try:
        codecs.decode(np.frombuffer(raw, np.uint8))
    except ValueError:
        pass


@settings(max_examples=100, deadline=None)
@given(codec=st.sampled_from(CODECS), n=st.integers(0, 200), cut=st.integers(1, 400))
def test_every_truncation_rejected(codec: str, n: int, cut: int) -> None:
    p = codecs.encode(codec, _data(n, 7), block=8)
    cut = min(cut, p.size)
    with pytest.raises(ValueError, match="truncated"):
        codecs.decode(p[: p.size - cut])
