"""Momentum-aware compression for `DistributedOptimizer` (DGC's momentum correction, as 1-bit Adam does it):
with a low-bit engine codec and `torch.optim.SGD(momentum > 0)`, each rank keeps its momentum locally, the
momentum update (what SGD would apply) is what travels, compressed with the engine's error feedback, and the
wrapped SGD then applies the averaged update with its momentum, dampening and weight decay switched off for
that step, so no second momentum amplifies the compression error by 1/(1 - momentum). Without Nesterov, each
rank's momentum then restarts from the averaged update it just applied (`sync`, as 1-bit Adam does with its
momentum): in the simulated race workload that took onebit from 230 steps to 85% to 150, dense's 160
(benchmarks/onebit_convergence.py, docs/torch.md "Training at 1 bit").
Exercised by tests/torch/test_compression.py (load_digits on 4 ranks) and tests/torch/test_optimizer.py.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

__all__ = ["LOCAL_MOMENTUM_CODECS", "SYNC_MOMENTUM", "LocalMomentum", "local_momentum_for", "engine_codec"]

# Codecs whose error amplified by momentum breaks training (onebit) or costs accuracy (int4), and "auto",
# which under local momentum may choose them (the optimizer then asks the engine for "auto_lowbit": see
# `engine_codec`). int8 trains within a point of dense as it is, so it takes this path only when asked
# (local_momentum=True).
LOCAL_MOMENTUM_CODECS = ("onebit", "int4", "auto")
# After the all-reduce, each rank's momentum buffer becomes the averaged update it applies (without Nesterov,
# where the update is the buffer itself). Measured on the race workload (Fashion-MNIST MLP, 4 ranks, onebit ring,
# block 256, simulated): steps to 85% fell from 230 (each rank keeping its own buffer) to 150 (dense: 160), and
# on a second seed matched dense (220 and 220).
SYNC_MOMENTUM = True
_SWITCHED_OFF = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False}


def local_momentum_for(optimizer: torch.optim.Optimizer, codec: str, requested: bool | None) -> "LocalMomentum | None":
    """The local-momentum helper for this optimizer and codec, or None where the plain path applies.

    requested None: on for SGD with momentum and a codec in LOCAL_MOMENTUM_CODECS; True: on for SGD with
    momentum whatever the compression (with exact communication it is dense SGD again, by linearity: the mean
    of the ranks' momentum buffers is the momentum of the mean gradient); False: off."""
    is_sgd = isinstance(optimizer, torch.optim.SGD)
    has_momentum = is_sgd and any(g.get("momentum", 0) for g in optimizer.param_groups)
    if requested is None:
        return LocalMomentum(optimizer) if has_momentum and codec in LOCAL_MOMENTUM_CODECS else None
    if not requested:
        return None
    if not is_sgd:
        raise ValueError(f"neptune_rt: local_momentum=True needs torch.optim.SGD (with momentum > 0), got "
                         f"{type(optimizer).__name__}; for Adam use neptune_rt.torch.OneBitAdam")
    return LocalMomentum(optimizer) if has_momentum else None


def engine_codec(codec: str, local_momentum: bool) -> str:
    """The engine codec to request: "auto" becomes "auto_lowbit" under local momentum, so that the engine's cost
    model may also pick int4 and onebit (which train like dense only when the momentum-corrected update, not
    the raw gradient, is what error feedback compresses); every other codec stays as it is."""
    return "auto_lowbit" if codec == "auto" and local_momentum else codec


class LocalMomentum:
    """Turns each parameter's gradient into SGD's update direction before it is communicated.

    Per parameter, exactly as torch.optim.SGD computes it (foreach=False) on this rank's gradient g:
        d = -g if maximize else g;  d += weight_decay * p
        buf = d (first step) or momentum * buf + (1 - dampening) * d
        u = d + momentum * buf (nesterov) or buf
    `u` replaces `.grad` and is all-reduced (compressed, with error feedback); `buf` stays on this rank, in the
    wrapped optimizer's state under "momentum_buffer" (so checkpoints keep it). With `sync` (default
    SYNC_MOMENTUM) and without Nesterov, `applying()` first sets `buf` to the averaged update ū in `.grad`, the
    same on every rank: the momentum continues from the step actually taken, compression error included. (So
    with `sync`, `transform` computes u into `.grad` without writing `buf`, which applying() replaces anyway.)
    Groups without momentum are left to the wrapped optimizer unchanged.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, sync: bool | None = None):
        self._opt = optimizer
        self._sync = SYNC_MOMENTUM if sync is None else sync  # read now: a change of the module default counts
        self._groups: dict[torch.Tensor, dict[str, Any]] = {}

    def _group_of(self, p: torch.Tensor) -> dict[str, Any] | None:
        if p not in self._groups:  # a parameter group added since: map every parameter again
            self._groups = {q: g for g in self._opt.param_groups for q in g["params"]}
        return self._groups.get(p)

    @torch.no_grad()
    def transform(self, params: list[torch.Tensor]) -> None:
        """Replaces, in place, each parameter's .grad (a view into its bucket) by its local update direction."""
        for p in params:
            group = self._group_of(p)
            if group is None or not group.get("momentum", 0) or p.grad is None:
                continue
            momentum, dampening = group["momentum"], group.get("dampening", 0.0)
            # d is .grad itself, changed in place (the bucket gets the update direction anyway): no copy of the
            # gradient per step (the step profile showed this transform as most of the hook's time).
            d = p.grad
            if group.get("maximize", False):
                d.neg_()
            if group.get("weight_decay", 0):
                d.add_(p, alpha=group["weight_decay"])
            state = self._opt.state[p]
            buf = state.get("momentum_buffer")
            nesterov = group.get("nesterov", False)
            if buf is None:
                buf = state["momentum_buffer"] = d.clone()
            elif self._sync and not nesterov:
                # u = momentum * buf + (1 - dampening) * d, into d; buf itself is replaced by the averaged update
                # in applying(), so it is not written here: one pass over d and buf instead of three (two with
                # dampening).
                if dampening:
                    d.mul_(1 - dampening)
                d.add_(buf, alpha=momentum)
                continue
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            if nesterov:
                d.add_(buf, alpha=momentum)
            else:
                d.copy_(buf)

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        for group in self._opt.param_groups:
            if not group.get("momentum", 0) or group.get("nesterov", False):
                continue  # Nesterov's update d + momentum * buf is not the buffer: each rank keeps its own
            for p in group["params"]:
                buf = self._opt.state[p].get("momentum_buffer") if p in self._opt.state else None
                if p.grad is not None and buf is not None:
                    buf.copy_(p.grad)

    @contextlib.contextmanager
    def applying(self) -> Iterator[None]:
        """Inside: the wrapped SGD applies .grad (the averaged update) as plain `p -= lr * grad`; with `sync`,
        the momentum buffers are set to that update first."""
        if self._sync:
            self._sync_buffers()
        saved = []
        for group in self._opt.param_groups:
            if group.get("momentum", 0):
                saved.append((group, {k: group[k] for k in _SWITCHED_OFF if k in group}))
                group.update({k: v for k, v in _SWITCHED_OFF.items() if k in group})
        try:
            yield
        finally:
            for group, values in saved:
                group.update(values)
