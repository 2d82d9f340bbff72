"""`PlanSampler`, the one data sampler of neptune_rt (the Trainer's and a hand-written loop's): cuts each global
batch of a seeded per-epoch permutation into disjoint per-rank slices of the sizes the caller gives for that step
(a plan's, or `equal_split`), so every sample is used exactly once per epoch whatever the sizes; deterministic
and resumable mid-epoch (state_dict). Pure; tested in tests/schedule/test_sampler.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from neptune_rt.schedule.waterfill import integer_split

__all__ = ["PlanSampler", "GlobalBatch", "equal_split"]


def equal_split(global_batch: int, world: int) -> list[int]:
    """`global_batch` split across `world` ranks as evenly as possible (the first ranks take the remainder)."""
    if world < 1 or global_batch < 0:
        raise ValueError(f"cannot split a batch of {global_batch} across {world} ranks")
    base, extra = divmod(global_batch, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


@dataclass(frozen=True)
class GlobalBatch:
    """One step's data: `indices` are this rank's samples; `local_batches` the sizes every rank got (the
    last batch of an epoch may be smaller than asked: weight gradients by local_batches[r] / global_batch)."""
    epoch: int
    step: int
    indices: np.ndarray
    local_batches: tuple[int, ...]

    @property
    def global_batch(self) -> int:
        return sum(self.local_batches)

    def weight(self, rank: int) -> float:
        return self.local_batches[rank] / self.global_batch


class PlanSampler:
    """dataset_size samples, permuted afresh each epoch by (seed, epoch). `next(local_batches)` returns the
    next global batch cut for this rank; at the end of an epoch the remaining samples form a smaller batch,
    split in proportion to the requested sizes (a rank may then get none)."""

    def __init__(self, dataset_size: int, rank: int, world_size: int, seed: int = 0, shuffle: bool = True):
        if dataset_size < 1:
            raise ValueError(f"PlanSampler: dataset_size must be >= 1, got {dataset_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"PlanSampler: rank {rank} is outside a world of {world_size}")
        self.dataset_size, self.rank, self.world_size = dataset_size, rank, world_size
        self.seed, self.shuffle = int(seed), shuffle
        self.epoch, self.position, self.step = 0, 0, 0
        self._order: np.ndarray | None = None

    def _permutation(self) -> np.ndarray:
        if self._order is None:
            if self.shuffle:
                self._order = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_size)
            else:
                self._order = np.arange(self.dataset_size)
        return self._order

    def next(self, local_batches: Sequence[int]) -> GlobalBatch:
        sizes = [int(b) for b in local_batches]
        if len(sizes) != self.world_size or min(sizes) < 0 or sum(sizes) == 0:
            raise ValueError(f"PlanSampler: rank {self.rank}: need {self.world_size} non-negative local batch "
                             f"sizes with a positive sum, got {sizes}")
        if self.position >= self.dataset_size:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        remaining = self.dataset_size - self.position
        if sum(sizes) > remaining:  # last, short batch of the epoch: shrink the shares proportionally
            cap = sum(sizes)
            sizes = integer_split([0.0] * len(sizes), [cap / max(s, 1e-9) for s in sizes], remaining,
                                  [0] * len(sizes), sizes)
        start = self.position + sum(sizes[:self.rank])
        indices = self._permutation()[start:start + sizes[self.rank]].copy()
        batch = GlobalBatch(self.epoch, self.step, indices, tuple(sizes))
        self.position += sum(sizes)
        self.step += 1
        return batch

    @property
    def epoch_done(self) -> bool:
        return self.position >= self.dataset_size

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "step": self.step, "seed": self.seed,
                "dataset_size": self.dataset_size, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dataset_size"] != self.dataset_size or state["seed"] != self.seed:
            raise ValueError(f"PlanSampler: rank {self.rank}: checkpoint is for {state['dataset_size']} samples "
                             f"with seed {state['seed']}, this sampler has {self.dataset_size} and {self.seed}")
        self.epoch, self.position, self.step = int(state["epoch"]), int(state["position"]), int(state["step"])
        self.shuffle, self._order = bool(state["shuffle"]), None
