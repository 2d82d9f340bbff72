"""Water-filling split of a global batch across ranks with linear compute-time models t_i(b) = a_i + c_i b:
the continuous optimum (all unclipped ranks finish together) and the integer split of least makespan.
Pure functions; tested against brute force in tests/schedule/test_waterfill.py.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["continuous_split", "integer_split", "makespan"]


def _check(a: Sequence[float], c: Sequence[float], total: int, lo: Sequence[int], hi: Sequence[int]) -> None:
    n = len(a)
    if not (len(c) == len(lo) == len(hi) == n) or n == 0:
        raise ValueError(f"water-filling needs one a, c, lo, hi per rank, got {len(a)}, {len(c)}, {len(lo)}, "
                         f"{len(hi)}")
    for i in range(n):
        if not c[i] > 0 or not math.isfinite(c[i]):
            raise ValueError(f"rank {i}: per-sample time c must be finite and > 0, got {c[i]}")
        if lo[i] < 0 or lo[i] > hi[i]:
            raise ValueError(f"rank {i}: local batch bounds [{lo[i]}, {hi[i]}] are empty or negative")
    if not sum(lo) <= total <= sum(hi):
        raise ValueError(f"global batch {total} is outside what the ranks' bounds allow "
                         f"[{sum(lo)}, {sum(hi)}]; raise the per-rank maximum (micro-batch x accumulation) "
                         f"or lower the global batch")


def continuous_split(a: Sequence[float], c: Sequence[float], total: float, lo: Sequence[float],
                     hi: Sequence[float]) -> tuple[list[float], float]:
    """Real shares x_i in [lo_i, hi_i] summing to `total` such that every rank not at a bound finishes at the
    same time T (the water level): x_i = clip((T - a_i) / c_i, lo_i, hi_i). Returns (x, T)."""
    n = len(a)
    # sum_i clip((T - a_i)/c_i, lo_i, hi_i) is piecewise linear and non-decreasing in T, with breakpoints
    # where a rank leaves its lower bound (a_i + c_i lo_i) or reaches its upper one (a_i + c_i hi_i): walk
    # them in order and solve the linear piece that crosses the total. O(n log n), exact.
    def filled(level: float) -> float:
        return sum(min(max((level - a[i]) / c[i], lo[i]), hi[i]) for i in range(n))

    points = sorted({a[i] + c[i] * lo[i] for i in range(n)} | {a[i] + c[i] * hi[i] for i in range(n)})
    level = points[-1]
    prev, prev_fill = points[0], filled(points[0])
    if prev_fill >= total:
        level = prev
    else:
        for point in points[1:]:
            fill = filled(point)
            if fill >= total:
                level = prev + (point - prev) * (total - prev_fill) / (fill - prev_fill)
                break
            prev, prev_fill = point, fill
    x = [min(max((level - a[i]) / c[i], lo[i]), hi[i]) for i in range(n)]
    # Remove float residue on one unclipped rank so that the shares sum to the total exactly.
    free = [i for i in range(n) if lo[i] < x[i] < hi[i]]
    if free:
        i = free[0]
        x[i] = min(max(x[i] + total - sum(x), lo[i]), hi[i])
    return x, level


def makespan(a: Sequence[float], c: Sequence[float], split: Sequence[int]) -> float:
    """Predicted time of the slowest rank (ranks with no samples take no time)."""
    return max((ai + ci * b) if b > 0 else 0.0 for ai, ci, b in zip(a, c, split))


def integer_split(a: Sequence[float], c: Sequence[float], total: int, lo: Sequence[int],
                  hi: Sequence[int]) -> list[int]:
    """The integer shares (summing to `total`, within bounds) of least makespan max_i a_i + c_i b_i.

    Start from the floors of the continuous optimum (every integer optimum can be reached from there, since
    those floors finish no later than the continuous water level), then hand out the remaining samples one at
    a time to the rank that would finish earliest with one more (ties to the lower rank: deterministic).
    Greedy increments are optimal for a min-max of increasing separable costs."""
    total = int(total)
    _check(a, c, total, lo, hi)
    x, _ = continuous_split(a, c, total, lo, hi)
    split = [min(max(int(math.floor(xi + 1e-9)), l), h) for xi, l, h in zip(x, lo, hi)]
    while sum(split) > total:  # float residue only: take back from the rank finishing last
        i = max((j for j in range(len(split)) if split[j] > lo[j]), key=lambda j: (a[j] + c[j] * split[j], -j))
        split[i] -= 1
    while sum(split) < total:
        i = min((j for j in range(len(split)) if split[j] < hi[j]),
                key=lambda j: (a[j] + c[j] * (split[j] + 1), j))
        split[i] += 1
    return split
