"""Gradient codecs (fp32 -> compact payload -> fp32) backed by the C++ kernels in csrc/codecs.

Public API: encode/decode/decode_add on numpy float32 arrays, payload_bytes, CODECS, is_summable and
error_bound (the per-element error each codec promises, which tests/test_codecs.py enforces).
"""

from __future__ import annotations

import numpy as np

from neptune_rt import _C

__all__ = ["CODECS", "DEFAULT_BLOCK", "encode", "decode", "decode_add", "payload_bytes", "payload_header",
           "is_summable", "error_bound"]

CODECS: tuple[str, ...] = tuple(_C.codec_names())
DEFAULT_BLOCK: int = _C.DEFAULT_BLOCK_SIZE


def encode(codec: str, src: np.ndarray, residual: np.ndarray | None = None, block: int = DEFAULT_BLOCK,
           rounding: str = "nearest", seed: int = 0, step: int = 0, rank: int = 0,
           index_base: int = 0, out: np.ndarray | None = None) -> np.ndarray:
    """Encode float32 `src` into a uint8 payload (a new array, or the first payload_bytes of `out`).

    With `residual` (float32, same size, owned by the caller) error feedback is fused and the residual is
    updated in place: r += src; q = Q(r); r -= D(q). Stochastic rounding (int8/int4) draws from a
    counter-based hash of (seed, step, rank, index_base + i): the same arguments give the same bytes.
    """
    if out is not None:
        n = _C.encode_into(codec, src, out, residual, block, rounding, seed, step, rank, index_base)
        return out[:n]
    return _C.encode(codec, src, residual, block, rounding, seed, step, rank, index_base)


def decode(payload: np.ndarray | bytes, out: np.ndarray | None = None) -> np.ndarray:
    """Decode a payload (validated: a malformed or truncated one raises ValueError) into float32."""
    if out is None:
        out = np.empty(int(_C.payload_header(payload)["count"]), np.float32)
    _C.decode(payload, out)
    return out


def decode_add(payload: np.ndarray | bytes, out: np.ndarray) -> np.ndarray:
    """out += decoded payload (float32 accumulation), the reduction step of compressed all-reduce."""
    _C.decode_add(payload, out)
    return out


def payload_bytes(codec: str, count: int, block: int = DEFAULT_BLOCK) -> int:
    return int(_C.payload_bytes(codec, count, block))


def payload_header(payload: np.ndarray | bytes) -> dict:
    return dict(_C.payload_header(payload))


def is_summable(codec: str) -> bool:
    """True when payloads can be summed elementwise without decoding (fp16, bf16, none)."""
    return bool(_C.codec_summable(codec))


# Slack for the fp32 arithmetic of the scale, the product and the residual (a few ulps).
_REL_SLACK = 1.0 + 2.0 ** -18


def error_bound(codec: str, x: np.ndarray, block: int = DEFAULT_BLOCK, rounding: str = "nearest") -> np.ndarray:
    """Per-element bound on |decode(encode(x)) - x| for one quantization (no residual).

    none: 0. fp16: |x| 2^-11 + 2^-25 (for |x| <= 65504). bf16: |x| 2^-8. int8/int4 with absmax A of the
    block and L = 127 / 7 levels: A / (2L) round-to-nearest, A / L stochastic. onebit: A (| |x| - mean|x| |
    never exceeds the block's max). Blocks with A < 1e-30 encode as zero (error |x| <= A).
    """
    a = np.abs(np.asarray(x, np.float64).reshape(-1))
    if codec == "none":
        return np.zeros_like(a)
    if codec == "fp16":
        return a * 2.0 ** -11 * _REL_SLACK + 2.0 ** -25
    if codec == "bf16":
        return a * 2.0 ** -8 * _REL_SLACK + 1e-38
    if codec not in ("int8", "int4", "onebit"):
        raise ValueError(f"unknown codec {codec!r}; expected one of {CODECS}")
    nb = -(-a.size // block)
    padded = np.zeros(nb * block)
    padded[: a.size] = a
    amax = np.repeat(padded.reshape(nb, block).max(axis=1), block)[: a.size]
    if codec == "onebit":
        return amax * _REL_SLACK
    levels = 127.0 if codec == "int8" else 7.0
    step = amax / levels
    bound = step * (1.0 if rounding == "stochastic" else 0.5) * _REL_SLACK + amax * 2.0 ** -22
    return np.where(amax < 1e-30, amax, bound)
