"""Data sharding that follows the global batch: each epoch is one seeded permutation of the training set, cut
into consecutive global batches, and each global batch into disjoint per-rank slices of the sizes the caller
gives for that step (a fixed equal split today; the batch-size scheduler may pass any sizes). Every sample is
seen exactly once per epoch whatever the sizes; the position (epoch, offset) is all a resume needs.
Exercised by tests/train/test_sampler.py.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["EpochSampler", "Position", "equal_split"]


def equal_split(global_batch: int, world: int) -> list[int]:
    """`global_batch` split across `world` ranks as evenly as possible (the first ranks take the remainder)."""
    if world < 1 or global_batch < 0:
        raise ValueError(f"cannot split a batch of {global_batch} across {world} ranks")
    base, extra = divmod(global_batch, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


@dataclass
class Position:
    """Where the sampler stands: `offset` samples of epoch `epoch` have been handed out."""
    epoch: int = 0
    offset: int = 0


class EpochSampler:
    """Per-rank index slices of each global batch. Pure and deterministic given (num_samples, seed)."""

    def __init__(self, num_samples: int, seed: int):
        if num_samples < 1:
            raise ValueError(f"the training set is empty (num_samples={num_samples})")
        self.num_samples = num_samples
        self.seed = seed
        self._perm_epoch = -1
        self._perm = np.empty(0, dtype=np.int64)

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._perm, self._perm_epoch = rng.permutation(self.num_samples), epoch
        return self._perm

    def batch_size_at(self, pos: Position, global_batch: int) -> int:
        """The global batch at `pos`: `global_batch`, or what is left of the epoch (the last batch is smaller)."""
        return min(global_batch, self.num_samples - pos.offset)

    def slices(self, pos: Position, sizes: list[int]) -> list[np.ndarray]:
        """Indices for every rank (rank r gets sizes[r] of them) of the global batch starting at `pos`."""
        total = sum(sizes)
        if any(s < 0 for s in sizes) or total < 1 or pos.offset + total > self.num_samples:
            raise ValueError(f"batch sizes {sizes} do not fit at offset {pos.offset} of an epoch of "
                             f"{self.num_samples} samples")
        perm = self.permutation(pos.epoch)
        bounds = np.cumsum([0] + list(sizes)) + pos.offset
        return [perm[bounds[r]:bounds[r + 1]] for r in range(len(sizes))]

    def advance(self, pos: Position, taken: int) -> Position:
        """The position after a global batch of `taken` samples (rolling over to the next epoch)."""
        offset = pos.offset + taken
        return Position(pos.epoch + 1, 0) if offset >= self.num_samples else Position(pos.epoch, offset)

    def steps_per_epoch(self, global_batch: int) -> int:
        return -(-self.num_samples // global_batch)
