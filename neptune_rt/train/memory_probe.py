"""The Trainer's memory probe (docs/train.md, "Out of memory"): before the first step of a `--balance` run whose
limits nobody set, each rank's largest micro-batch is measured collectively (`probe_max_micro`) and becomes the
plan's `max_micro`. Here: whether to probe (agreed by every rank, so a mixed CPU/CUDA job cannot split), the
CUDA capacity a rank may use (its share of a GPU that other ranks of its node use too, less the optimizer's state
still to come), and passes that leave no trace (buffers and random streams restored). Tested through
tests/train/test_train_balance.py (probe_worker.py) and, on a GPU, tests/torch/test_gpu.py.
"""
from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Any

import torch

import neptune_rt.torch as nrt

if TYPE_CHECKING:
    from neptune_rt.train.trainer import Trainer

__all__ = ["maybe_probe", "optimizer_state_bytes", "cuda_capacity", "gpu_shares"]


def maybe_probe(trainer: "Trainer") -> list[int] | None:
    """Collective: probes when any rank has memory to measure (Balancer.wants_probe); the limits, or None."""
    wanted = nrt.allreduce(torch.tensor([float(trainer.balance.wants_probe(trainer.device.type))]),
                           name="train.memory_probe.wanted", op=nrt.Max)
    return probe(trainer) if wanted.item() > 0 else None


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> float:
    """Bytes the optimizer's state will take that it does not hold yet: per trainable parameter, Adam-style moments
    (a group with `betas`: two copies, three with amsgrad) or SGD's momentum buffer (one), less the state already
    there (a resumed run's)."""
    need = 0.0
    for group in optimizer.param_groups:
        copies = (2 + bool(group.get("amsgrad"))) if "betas" in group else (1 if group.get("momentum", 0) else 0)
        need += copies * sum(p.numel() * p.element_size() for p in group["params"] if p.requires_grad)
    held = sum(v.numel() * v.element_size() for state in optimizer.state.values() for v in state.values()
               if torch.is_tensor(v))
    return max(0.0, need - held)


def cuda_capacity(device: torch.device, reserve: float) -> float | None:
    """Collective (every rank calls it; None on a CPU rank): the bytes this rank's probe may aim at, its share of
    its GPU (ranks on one host that see the same device, by UUID, split it) less `reserve`. Where that leaves
    nothing, every rank raises the same error naming the ranks."""
    mine = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        mine = (socket.gethostname(), str(getattr(props, "uuid", device.index)), float(props.total_memory), reserve)
    every = nrt.allgather_object(mine, name="train.memory_probe.devices")
    shares = gpu_shares(every, nrt.rank())  # the same on every rank: the error too
    return None if mine is None else shares[nrt.rank()]


def gpu_shares(every: list[tuple[str, str, float, float] | None], rank: int) -> dict[int, float]:
    """Per CUDA rank, from every rank's (host, device UUID, total bytes, reserve) or None: its device's total
    divided among the ranks of its host on the same device, less its reserve. RuntimeError naming the ranks left
    with nothing."""
    shares, why = {}, {}
    for r, entry in enumerate(every):
        if entry is not None:
            sharers = sum(1 for other in every if other is not None and other[:2] == entry[:2])
            shares[r] = entry[2] / sharers - entry[3]
            why[r] = (entry[2], sharers, entry[3])
    short = sorted(r for r, share in shares.items() if share <= 0)
    if short:
        total, sharers, need = why[short[0]]
        raise RuntimeError(f"neptune_rt: rank {rank}: memory probe: rank(s) {short} have no memory to train in: rank "
                           f"{short[0]}'s GPU ({total / 2**30:.1f} GiB) is shared by {sharers} rank(s) and the "
                           f"optimizer's state will take {need / 2**30:.1f} GiB of each share; use fewer ranks per "
                           f"GPU, or set --max-micro to skip the probe")
    return shares


def probe(trainer: "Trainer") -> list[int]:
    """Each rank's largest micro-batch, measured on its first training samples; the plan's new limits."""
    t0 = time.monotonic()
    model, device = trainer.model, trainer.device
    limit = max(1, min(trainer.balance.largest_share, len(trainer.x_train)))
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = {name: b.detach().to("cpu", copy=True) for name, b in model.named_buffers()}
    capacity = cuda_capacity(device, optimizer_state_bytes(trainer.user_optimizer))
    model.train()

    def run(b: int) -> None:  # no .grad and no communication hooks: autograd.grad
        x, y = trainer.x_train[:b].to(device), trainer.y_train[:b].to(device)
        with trainer._autocast():
            loss = trainer.loss_fn(model(x), y)
        torch.autograd.grad(loss, params, allow_unused=True)  # a parameter the forward skips is no error
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        limits = trainer.balance.probe_memory(run, device, limit, capacity)
    _restore(model, buffers)
    if trainer.lead:
        trainer.progress.message(f"memory probe: largest micro-batch per rank {'/'.join(map(str, limits))} "
                                 f"({time.monotonic() - t0:.1f} s)")
    return limits


def _restore(model: torch.nn.Module, saved: dict[str, Any]) -> None:
    """The buffers as before the probe (BatchNorm's running statistics and counts); one whose shape the probe
    changed (a lazy module's) is left as it is."""
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in saved and saved[name].shape == b.shape:
                b.copy_(saved[name])
