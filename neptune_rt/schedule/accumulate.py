"""Local backward with gradient accumulation for a plan's micro-batches, measuring this rank's squared
gradient norm on the way (the noise-scale input). Works under DistributedOptimizer and DDP: all micro-batches
but the last go through torch.autograd.grad (no .grad, no communication hooks); the last through backward()
with a one-shot tensor hook that adds the earlier ones, so the communication hooks fire once per parameter with
the whole local gradient. Tested under mpirun by tests/schedule/test_schedule_mpi.py (weighted gradient).
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch

__all__ = ["local_backward", "micro_weights"]


def micro_weights(sizes: Sequence[int]) -> list[float]:
    """Loss weights m_j / b of micro-batches of sizes m_j (b = their sum): with per-micro-batch mean losses
    scaled by these, the accumulated gradient is the mean over the rank's whole local batch."""
    total = sum(sizes)
    return [m / total for m in sizes]


def local_backward(params: Iterable[torch.Tensor], losses: Sequence[Callable[[], torch.Tensor]],
                   measure_norm: bool = True) -> float:
    """Runs each `losses[j]()` (a scalar loss, already weighted, e.g. by micro_weights) backward and leaves
    their sum's gradient in .grad (through one backward, so communication hooks fire once). Returns the
    squared norm of that local gradient (-1.0 if measure_norm is False). No losses (a rank whose share of a short
    last batch is empty): nothing runs and the norm is 0.0; with DistributedOptimizer the rank still calls
    synchronize(), contributing zeros (DDP has no such path: give every rank a sample there)."""
    params = [p for p in params if p.requires_grad]
    if not losses:
        return 0.0 if measure_norm else -1.0
    acc: dict[torch.Tensor, torch.Tensor] = {}
    for fn in losses[:-1]:
        grads = torch.autograd.grad(fn(), params, allow_unused=True)
        for p, g in zip(params, grads):
            if g is not None:
                acc[p] = acc[p] + g if p in acc else g
    sq: list[torch.Tensor] = []
    handles = []

    def make_hook(p: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(g: torch.Tensor) -> torch.Tensor:
            total = g + acc[p] if p in acc else g
            if measure_norm:
                sq.append(torch.sum(total.detach().double() ** 2))
            return total
        return hook

    if acc or measure_norm:
        handles = [p.register_hook(make_hook(p)) for p in params]
    try:
        last = losses[-1]()
        # A parameter only earlier micro-batches reached (a branch, an embedding row, an expert) would get no hook
        # call in the last backward, and its accumulated gradient would be lost: a zero term puts each such one in
        # the graph, so its hook adds acc[p] and the communication hooks (DDP's too) see the whole gradient.
        if acc:
            last = last + sum((p * 0).sum() for p in acc)
        last.backward()
    finally:
        for h in handles:
            h.remove()
    return float(torch.stack(sq).sum().item()) if (measure_norm and sq) else -1.0
