"""Per-element error bounds of one compressed all-reduce, derived from each codec's error model.

One quantization of x (no residual) errs by at most: none 0; fp16 |x| 2^-11; bf16 |x| 2^-8; int8/int4 with
block absmax A and L = 127 / 7 levels: A / (2L) round-to-nearest, A / L stochastic; onebit A (| |x| - mean|x| |
never exceeds the block's max). An all-reduce composes them: the two-phase algorithm quantizes every
contribution once and the reduced sum once more; the requantizing ring (and the 16-bit ring of fp16/bf16)
quantizes the growing partial sum at every hop. Blocks start wherever the algorithm's segments do, so A is
taken over every block that could hold the element: the aligned blocks around it (any run of at most `block`
values that contains element i lies inside the three aligned blocks around i // block).

Used by benchmarks/allreduce.py (#wrong) and tests/workers/engine_worker.py (codecs through the engine),
against the exact fp64 sum. For fp16, bf16 and int8 the bound is tight enough that dropping one rank's
contribution breaks it on over 90% of the elements (4 ranks, normal data). For int4, and above all onebit
(whose one-step error is of the order of the values: median bound 35x the values at 4 ranks), one step says
little: their correctness is error feedback across steps (tests/test_compressed_allreduce.py, 500 steps) and
the bitwise numpy reference of tests/test_residuals.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["quantization_bound", "allreduce_bound"]

_LEVELS = {"int8": 127.0, "int4": 7.0}
_SLACK = 1.0 + 2.0 ** -16  # fp32 rounding of the scale, the product and the residual (a few ulps)


def _neighbourhood_max(a: np.ndarray, block: int) -> np.ndarray:
    """For each element, the max of `a` over the aligned blocks i // block - 1 .. i // block + 1."""
    nb = -(-a.size // block)
    padded = np.zeros(nb * block)
    padded[: a.size] = a
    m = padded.reshape(nb, block).max(axis=1)
    around = m.copy()
    around[1:] = np.maximum(around[1:], m[:-1])
    around[:-1] = np.maximum(around[:-1], m[1:])
    return np.repeat(around, block)[: a.size]


def quantization_bound(codec: str, magnitude: np.ndarray, block: int, rounding: str = "nearest") -> np.ndarray:
    """Bound on |D(Q(x)) - x| per element for any x with |x| <= magnitude elementwise, any block alignment."""
    m = np.asarray(magnitude, np.float64).reshape(-1)
    if codec == "none":
        return np.zeros_like(m)
    if codec == "fp16":
        return m * 2.0 ** -11 * _SLACK + 2.0 ** -24  # + half the smallest subnormal step
    if codec == "bf16":
        return m * 2.0 ** -8 * _SLACK + 1e-38
    if m.size == 0:
        return m
    amax = _neighbourhood_max(m, block)
    if codec == "onebit":
        return amax * _SLACK
    if codec not in _LEVELS:
        raise ValueError(f"unknown codec {codec!r}")
    per_level = amax / _LEVELS[codec]
    return per_level * (1.0 if rounding == "stochastic" else 0.5) * _SLACK + amax * 2.0 ** -22


def allreduce_bound(codec: str, contributions: Iterable[np.ndarray], algorithm: str, block: int,
                    rounding: str = "nearest") -> np.ndarray:
    """Bound on |result - sum(contributions)| per element for one compressed sum all-reduce without
    residuals; `contributions` (one array per rank) is read once, so a generator keeps memory flat.
    algorithm: "two_phase" or "ring" (the engine's NEPTUNE_RT_COMPRESSED_ALGORITHM; fp16/bf16 always take
    the 16-bit ring)."""
    two_phase = algorithm == "two_phase" and codec in ("int8", "int4", "onebit")
    n, mag, first = 0, None, None
    for c in contributions:
        a = np.abs(np.asarray(c, np.float64).reshape(-1))
        mag = a if mag is None else mag + a
        if two_phase:
            q = quantization_bound(codec, a, block, rounding)
            first = q if first is None else first + q
        n += 1
    if mag is None:
        raise ValueError("allreduce_bound needs at least one contribution")
    if codec == "none" or n <= 1:  # one rank: nothing is quantized
        return mag * n * 2.0 ** -23
    if two_phase:
        bound = first + quantization_bound(codec, mag + first, block, rounding)
    else:  # every hop quantizes the partial sum, at most mag + the error so far
        bound = np.zeros_like(mag)
        for _ in range(n):
            bound = bound + quantization_bound(codec, mag + bound, block, rounding)
    return bound + (mag + bound) * n * 2.0 ** -23  # fp32 accumulation of the decoded values
