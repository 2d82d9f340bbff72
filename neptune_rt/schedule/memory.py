"""Memory-safe probing of each rank's largest micro-batch: `MemoryProbe` is the pure policy (fit memory
against batch size from probes, predict the largest that fits, confirm it, bisect after an out-of-memory);
the meters measure one probe -- `CudaMemoryMeter` with torch.cuda.max_memory_allocated, `CpuMemoryMeter` with
a configurable cap standing in for device memory. Probing is collective (`probe_max_micro` in exchange.py):
every rank sees every rank's result, so one rank's OOM never leaves another waiting. Tested in
tests/schedule/test_memory.py and, with a cap on one rank only, under mpirun.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

__all__ = ["MemoryProbe", "SimulatedOOM", "CpuMemoryMeter", "CudaMemoryMeter"]


class SimulatedOOM(MemoryError):
    """Raised by CpuMemoryMeter when a probe would exceed its cap (a device's out-of-memory, on the CPU)."""


class MemoryProbe:
    """Per-rank search state. Each round `candidates()` gives every rank the micro-batch to try (0: done);
    `observe(rows)` takes every rank's (tried, ok, peak_bytes, capacity_bytes). Pure: every rank runs the
    same policy on the same rows.

    start: first micro-batch tried; limit: never probe above this (the data's batch, or a user cap);
    safety: fraction of capacity a result may peak at (allocator fragmentation, the optimizer's state): a
    probe that fits but peaks above it counts as too large, like an out-of-memory, though its peak still
    feeds the fit; max_rounds: probes per rank before settling on the best size that fitted."""

    def __init__(self, world_size: int, start: int = 16, limit: int = 4096, safety: float = 0.9,
                 max_rounds: int = 10):
        if not 1 <= start <= limit:
            raise ValueError(f"MemoryProbe: need 1 <= start <= limit, got start={start}, limit={limit}")
        if not 0 < safety <= 1:
            raise ValueError(f"MemoryProbe: need 0 < safety <= 1, got {safety}")
        self.world_size, self.limit, self.safety, self.max_rounds = world_size, limit, safety, max_rounds
        self.ok: list[dict[int, float]] = [{} for _ in range(world_size)]   # fitted size -> peak bytes
        self.failed: list[int | None] = [None] * world_size                   # smallest size that failed
        self.capacity = [0.0] * world_size                                    # latest capacity reported
        self.next: list[int] = [start] * world_size
        self.rounds = [0] * world_size

    def candidates(self) -> list[int]:
        return list(self.next)

    @property
    def done(self) -> bool:
        return all(n == 0 for n in self.next)

    def result(self) -> list[int]:
        """Per rank, the largest size that fitted under safety x capacity; where none did, the smallest that
        fitted at all (it ran, above the margin); 0 nowhere: a rank where nothing fitted raises."""
        best = []
        for r, ok in enumerate(self.ok):
            safe = self._safe_sizes(r)
            best.append(max(safe) if safe else (min(ok) if ok else 0))
        bad = [r for r, b in enumerate(best) if b == 0]
        if bad:
            raise RuntimeError(f"memory probing: rank(s) {bad} cannot fit even a micro-batch of 1 sample; "
                               f"use a smaller model, or more memory on those ranks")
        return best

    def observe(self, rows: list[list[float]]) -> None:
        for r, (tried, ok, peak, capacity) in enumerate(rows):
            tried = int(tried)
            if tried == 0:
                continue
            self.rounds[r] += 1
            self.capacity[r] = float(capacity)
            if ok:
                self.ok[r][tried] = float(peak)
            else:
                self.failed[r] = tried if self.failed[r] is None else min(self.failed[r], tried)
            self.next[r] = self._next(r)

    def _safe_sizes(self, r: int) -> list[int]:
        """Sizes that fitted with a peak under safety x capacity (all that fitted when no capacity is known)."""
        margin = self.safety * self.capacity[r]
        return [b for b, peak in self.ok[r].items() if self.capacity[r] <= 0 or peak <= margin]

    def _too_large(self, r: int) -> int | None:
        """Smallest size known too large: it failed, or it fitted with a peak above the safety margin."""
        over = [b for b in self.ok[r] if b not in self._safe_sizes(r)]
        known = over + ([self.failed[r]] if self.failed[r] is not None else [])
        return min(known) if known else None

    def _next(self, r: int) -> int:
        ok = self.ok[r]
        safe = self._safe_sizes(r)
        best, too_large = (max(safe) if safe else 0), self._too_large(r)
        ceiling = min(self.limit, (too_large - 1) if too_large is not None else self.limit)
        if best >= ceiling or self.rounds[r] >= self.max_rounds or ceiling < 1:
            return 0
        if too_large is not None and best and too_large - best <= max(1, best // 32):
            return 0  # bracketed to within 3%: good enough
        guess = self._predict(ok, self.capacity[r])
        if guess is None:
            guess = 2 * best if best else too_large // 2  # nothing under the margin yet: halve
        if too_large is not None and guess >= too_large:
            guess = (best + too_large) // 2  # the fit overshot once already: bisect the bracket
        if guess <= best:
            return 0  # the best size under the margin is at (or beyond) the prediction: confirmed
        return min(guess, ceiling)

    def _predict(self, ok: dict[int, float], capacity: float) -> int | None:
        """Largest size whose linear memory fit stays under safety x capacity (None before two fits)."""
        if len(ok) < 2 or capacity <= 0:
            return None
        sizes = sorted(ok)
        b0, b1 = sizes[0], sizes[-1]
        slope = (ok[b1] - ok[b0]) / (b1 - b0)
        if slope <= 0:
            return None
        intercept = ok[b1] - slope * b1
        return int((self.safety * capacity - intercept) / slope)


class CpuMemoryMeter:
    """Counts the bytes a forward pass saves for backward (the activations: what grows with the batch) on top
    of a fixed `base_bytes` (parameters, gradients, optimizer state), and raises SimulatedOOM as soon as the
    total would pass `capacity_bytes` -- where a device would fail too. Stands in for device memory on CPU."""

    def __init__(self, capacity_bytes: float, base_bytes: float = 0.0):
        self.capacity, self.base = float(capacity_bytes), float(base_bytes)
        self.peak = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        import torch
        seen: set[tuple[int, int]] = set()
        used = [self.base]

        def pack(t: "torch.Tensor") -> Any:
            origin = t._base if t._base is not None else t  # weight.t() is a view of a parameter
            if not (origin.is_leaf and origin.requires_grad):  # parameters are counted in base_bytes
                key = (t.data_ptr(), t.nbytes)  # a tensor saved by two ops counts once
                if key not in seen:
                    seen.add(key)
                    used[0] += t.nbytes
                    if used[0] > self.capacity:
                        raise SimulatedOOM(f"needs more than the {self.capacity / 2**20:.3g} MiB cap")
            return t

        self.peak = self.base
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                yield
        finally:
            self.peak = used[0]

    @staticmethod
    def is_oom(err: BaseException) -> bool:
        return isinstance(err, MemoryError)


class CudaMemoryMeter:
    """Peak of torch.cuda.max_memory_allocated over one probe; capacity: the device's total memory unless
    `capacity_bytes` caps it lower."""

    def __init__(self, device: Any = None, capacity_bytes: float | None = None):
        import torch
        self.device = torch.device("cuda") if device is None else torch.device(device)
        total = torch.cuda.get_device_properties(self.device).total_memory
        self.capacity = float(min(total, capacity_bytes) if capacity_bytes else total)
        self.peak = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        import torch
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            yield
            torch.cuda.synchronize(self.device)
        finally:
            self.peak = float(torch.cuda.max_memory_allocated(self.device))
            if self.peak > self.capacity:
                raise MemoryError(f"probe peaked at {self.peak / 2**20:.0f} MiB, over the "
                                  f"{self.capacity / 2**20:.0f} MiB cap")

    @staticmethod
    def is_oom(err: BaseException) -> bool:
        import torch
        return isinstance(err, (torch.cuda.OutOfMemoryError, MemoryError))

