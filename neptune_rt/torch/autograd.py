"""Differentiable collectives, as Horovod's: the backward of an all-reduce all-reduces the gradient with the
same op and scaling; of an allgather, averages the gradient and keeps this rank's rows; of a broadcast,
averages the gradient onto the root (zeros elsewhere). Used by neptune_rt.torch.ops when the input requires
grad; tested in tests/torch/workers/ops_worker.py. Backward collectives are unnamed: every rank must run the
same backward graph (as with Horovod)."""
from __future__ import annotations

from typing import Any

import torch

from neptune_rt import engine as _engine

__all__ = ["AllreduceFn", "AllgatherFn", "BroadcastFn"]


class AllreduceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None, op: str, prescale: float,
                postscale: float) -> torch.Tensor:
        ctx.args = (op, prescale, postscale)
        return _engine.allreduce(tensor.detach(), name, op, "none", prescale, postscale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        op, prescale, postscale = ctx.args
        return _engine.allreduce(grad.contiguous(), None, op, "none", prescale, postscale), None, None, None, None


class AllgatherFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, name: str | None) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return _engine.allgather(tensor.detach(), name)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        reduced = _engine.allreduce(grad.contiguous(), None, "average")
        rows = _engine.allgather(torch.tensor([ctx.rows], dtype=torch.int64), None)
        offset = int(rows[:_engine.rank()].sum().item())
        return reduced.narrow(0, offset, ctx.rows), None


class BroadcastFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, root_rank: int, name: str | None) -> torch.Tensor:
        ctx.root_rank = root_rank
        return _engine.broadcast(tensor.detach(), root_rank, name)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        reduced = _engine.allreduce(grad.contiguous(), None, "average")
        if _engine.rank() != ctx.root_rank:
            reduced.zero_()
        return reduced, None, None
