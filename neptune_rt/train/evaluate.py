"""Test-set evaluation for the Trainer: every rank scores a disjoint shard (rank, rank + size, ...) and one
all-reduce sums the counts, so every rank gets the same accuracy and loss. Exercised by tests/train/ (every
`neptune-rt train` run evaluates)."""
from __future__ import annotations

from typing import Any, Callable, ContextManager

import torch

import neptune_rt.torch as nrt

__all__ = ["score_test_set"]


def score_test_set(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
                 autocast: Callable[[], ContextManager[Any]], device: torch.device) -> tuple[float, float]:
    """Collective: (accuracy, mean loss) over the whole test set (loss_fn must accept reduction="sum")."""
    rank, size = nrt.rank(), nrt.size()
    mine = torch.arange(rank, len(x), size)
    model.eval()
    correct = loss_sum = 0.0
    with torch.no_grad(), autocast():
        for part in mine.split(4096):
            out = model(x[part].to(device)).float()
            target = y[part].to(device)
            loss_sum += float(loss_fn(out, target, reduction="sum"))
            correct += float((out.argmax(1) == target).sum())
    sums = nrt.allreduce(torch.tensor([correct, loss_sum, float(len(mine))], dtype=torch.float64),
                         name="eval.metrics", op=nrt.Sum)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])
