"""Local momentum for the DDP communication hook (CommHookState(momentum=beta)): DGC / 1-bit Adam style, the
hook compresses each rank's momentum-corrected update instead of its raw gradient, and still hands the user's
unchanged `torch.optim.SGD(momentum=beta, weight_decay=wd)` a gradient that makes its momentum buffer equal the
averaged local momentum. Per parameter p, with ū the average the previous step ended with (0 at first):

    u   = g + wd * p + beta * ū_prev        this rank's momentum, restarted from the shared ū_prev
    ū   = average of u over ranks            compressed, with the engine's error feedback per parameter name
    g~  = ū - beta * ū_prev - wd * p         what the hook returns to DDP as the bucket's gradient

SGD then computes d = g~ + wd * p and m = beta * m_prev + d = ū (m_prev = ū_prev by induction; torch's first
step takes m = d = ū), and steps p -= lr * ū: exactly the update DistributedOptimizer's local momentum applies
(onebit_momentum.py, with its momentum sync). With exact communication g~ is the averaged gradient, so the hook
is plain DDP again (tested bit-close). Nesterov and dampening do not fit this identity and are refused.
Exercised by tests/torch/test_comm_hook.py (workers/momentum_hook_worker.py, 4 ranks).
"""
from __future__ import annotations

import torch

__all__ = ["HookMomentum"]


class HookMomentum:
    """The hook's per-parameter ū_prev, keyed by parameter name (so DDP's bucket rebuilds do not matter)."""

    def __init__(self, momentum: float, weight_decay: float = 0.0):
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"neptune_rt: the DDP hook's momentum must be in (0, 1) (the value given to "
                             f"torch.optim.SGD), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"neptune_rt: the DDP hook's weight_decay must be >= 0, got {weight_decay}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.buffers: dict[str, torch.Tensor] = {}  # ū of the last step, per parameter name

    @torch.no_grad()
    def before(self, names: list[str], views: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        """Turns each gradient view (in DDP's bucket, in place) into this rank's local momentum u."""
        for name, v, p in zip(names, views, params):
            if self.weight_decay:
                v.add_(p.detach().view_as(v), alpha=self.weight_decay)
            prev = self.buffers.get(name)
            if prev is not None:
                v.add_(prev, alpha=self.momentum)

    @torch.no_grad()
    def after(self, names: list[str], views: list[torch.Tensor], params: list[torch.Tensor]) -> None:
        """Turns each averaged ū (in the bucket, in place) into the g~ that SGD's momentum maps back to ū."""
        for name, v, p in zip(names, views, params):
            averaged = v.clone()
            prev = self.buffers.get(name)
            if prev is not None:
                v.sub_(prev, alpha=self.momentum)
            if self.weight_decay:
                v.sub_(p.detach().view_as(v), alpha=self.weight_decay)
            self.buffers[name] = averaged

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """ValueError unless `optimizer` is an SGD whose every group has this momentum and weight decay and
        neither Nesterov nor dampening (the hook's g~ is only right for that optimizer)."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError(f"neptune_rt: the DDP hook's momentum={self.momentum} is for torch.optim.SGD, got "
                             f"{type(optimizer).__name__}; for Adam use neptune_rt.torch.OneBitAdam")
        for i, g in enumerate(optimizer.param_groups):
            want = dict(momentum=self.momentum, weight_decay=self.weight_decay, nesterov=False, dampening=0.0,
                        maximize=False)
            got = {k: g.get(k) for k in want}
            if got != want:
                raise ValueError(f"neptune_rt: param group {i} of the optimizer has {got}, but the DDP hook's state "
                                 f"was built for {want}: give CommHookState the optimizer's momentum and "
                                 f"weight_decay (Nesterov, dampening and maximize are not supported by the hook)")
