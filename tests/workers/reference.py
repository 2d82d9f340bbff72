"""Reference semantics shared by the MPI test workers: bfloat16 words <-> float32, exact reductions in
fp64/int64, and the engine's integer average (truncation toward zero)."""
from __future__ import annotations

import numpy as np

DTYPES = ["float32", "float64", "float16", "bfloat16", "int32", "int64", "uint8", "int8"]
OPS = ["sum", "average", "min", "max"]


def bf16_to_f32(words: np.ndarray) -> np.ndarray:
    return (words.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bfloat16 words (as the C++ side does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return rounded.astype(np.uint16)


def make_data(dtype: str, count: int, rank: int, seed: int = 0) -> np.ndarray:
    """Per-rank input. Floats for half types are small integers, so every sum is exact in fp16/bf16."""
    rng = np.random.default_rng(seed * 1000 + rank)
    if dtype in ("float32", "float64"):
        return rng.standard_normal(count).astype(dtype)
    if dtype == "float16":
        return rng.integers(-8, 9, count).astype(np.float16)
    if dtype == "bfloat16":
        return f32_to_bf16(rng.integers(-8, 9, count).astype(np.float32))
    if dtype in ("uint8",):
        return rng.integers(0, 50, count).astype(dtype)
    return rng.integers(-40, 41, count).astype(dtype)


def as_f64(x: np.ndarray, dtype: str) -> np.ndarray:
    return bf16_to_f32(x).astype(np.float64) if dtype == "bfloat16" else x.astype(np.float64)


def reduce_reference(inputs: list[np.ndarray], dtype: str, op: str) -> np.ndarray:
    """Exact reduction of the ranks' inputs, in the engine's output dtype representation."""
    n = len(inputs)
    if dtype in ("float32", "float64", "float16", "bfloat16"):
        stack = np.stack([as_f64(x, dtype) for x in inputs])
        ref = {"sum": stack.sum(0), "average": stack.sum(0) / n, "min": stack.min(0), "max": stack.max(0)}[op]
        return ref
    stack = np.stack([x.astype(np.int64) for x in inputs])
    if op == "sum":
        return stack.sum(0).astype(dtype)  # wraps like the C++ for 8-bit types
    if op == "average":
        s = stack.sum(0).astype(dtype).astype(np.int64)
        return (np.sign(s) * (np.abs(s) // n)).astype(dtype)
    return (stack.min(0) if op == "min" else stack.max(0)).astype(dtype)


def close(result: np.ndarray, ref: np.ndarray, dtype: str, n: int) -> bool:
    """Floats: within a few roundings of the exact fp64 value; integers and half types (integer data): exact."""
    if dtype == "float32":
        return np.allclose(result.astype(np.float64), ref, rtol=1e-5, atol=1e-5 * n)
    if dtype == "float64":
        return np.allclose(result, ref, rtol=1e-12, atol=1e-12 * n)
    if dtype in ("float16", "bfloat16"):
        got = as_f64(result, dtype)
        tol = 1e-2 if dtype == "bfloat16" else 1e-3  # only the average is inexact (x/n)
        return np.allclose(got, ref, rtol=tol, atol=tol)
    return np.array_equal(result, ref)


def expect_error(fn, kind, *fragments) -> str:
    """Runs fn, which must raise `kind` with every fragment in its message; returns the message."""
    try:
        fn()
    except kind as err:
        for f in fragments:
            assert f in str(err), f"error lacks {f!r}: {err}"
        return str(err)
    raise AssertionError(f"expected {kind.__name__} containing {fragments}")
