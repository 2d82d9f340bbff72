"""DistributedOptimizer against torch DDP (gloo) on the same data: dense steps, explicit synchronize + clipping,
gradient accumulation, parameters some ranks leave unused, and weighted averaging for unequal batches against a
single-process full-batch reference. Run by tests/torch/test_optimizer.py."""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from common import close, finish, setup

rank, size = setup()
STEPS = 6


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(20, 32)
        self.b = nn.Linear(32, 32)   # only sometimes used (see `use_b`)
        self.c = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, use_b: bool = True) -> torch.Tensor:
        h = torch.tanh(self.a(x))
        if use_b:
            h = h + torch.tanh(self.b(h))
        return self.c(h)


def make_model() -> Net:
    torch.manual_seed(0)  # identical start on every rank
    return Net()


def batch(step: int, r: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + r)
    return torch.randn(n, 20, generator=g), torch.randint(0, 4, (n,), generator=g)


def loss_of(model, x, y, **kw) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x, **kw), y)


def step_both(ours: nn.Module, opt: torch.optim.Optimizer, ddp: nn.Module, ref_opt: torch.optim.Optimizer,
              step: int, **kw) -> None:
    """One plain training step of our wrapper and of the DDP reference on this rank's batch of `step`."""
    x, y = batch(step, rank)
    opt.zero_grad()
    loss_of(ours, x, y, **kw).backward()
    opt.step()
    ref_opt.zero_grad()
    loss_of(ddp, x, y, **kw).backward()
    ref_opt.step()


def compare(what: str, ours: nn.Module, ref: nn.Module, atol: float = 1e-6) -> None:
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        close(f"{what}: {n}", p, q, atol=atol)


# 1. Dense: plain steps, and every other step an explicit synchronize + gradient clipping + skip_synchronize.
# Small buckets (4 KiB), so that several travel while backward runs.
ours, ref = make_model(), make_model()
opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9),
                               named_parameters=ours.named_parameters(), bucket_bytes=4096)
assert len(opt._buckets) == 3, f"rank {rank}: expected 3 buckets, got {len(opt._buckets)}"
sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)  # works on the wrapper
ddp = DDP(ref)
ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
ref_sched = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=2, gamma=0.5)
for step in range(STEPS):
    x, y = batch(step, rank)
    opt.zero_grad()
    loss_of(ours, x, y).backward()
    ref_opt.zero_grad()
    loss_of(ddp, x, y).backward()
    if step % 2:
        opt.synchronize()
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 0.5)
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)
        with opt.skip_synchronize():
            opt.step()
    else:
        opt.step()
    ref_opt.step()
    sched.step()
    ref_sched.step()
compare("dense vs DDP", ours, ref)
assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"], "rank {rank}: scheduler did not drive lr"
sd = opt.state_dict()
assert len(sd["state"]) == 6 and "momentum_buffer" in sd["state"][0], f"rank {rank}: state_dict {sd.keys()}"

# Misuse is reported, not silently wrong.
opt.zero_grad()
loss_of(ours, *batch(0, rank)).backward()
try:
    opt.zero_grad()
except AssertionError as err:
    assert "zero_grad" in str(err)
else:
    raise AssertionError(f"rank {rank}: zero_grad during communication was accepted")
try:
    loss_of(ours, *batch(0, rank)).backward()
except AssertionError as err:
    assert "backward_passes_per_step" in str(err), err
else:
    raise AssertionError(f"rank {rank}: a second backward without step() was accepted")
opt.synchronize()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    opt.step()  # after synchronize() without skip_synchronize(): Horovod's warning
assert any("skip_synchronize" in str(w.message) for w in caught), f"rank {rank}: no warning"
opt.remove_hooks()

# 2. backward_passes_per_step=2 against DDP with no_sync() on the first pass.
ours, ref = make_model(), make_model()
opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.05),
                               named_parameters=ours.named_parameters(), backward_passes_per_step=2)
ddp = DDP(ref)
ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
for step in range(STEPS):
    opt.zero_grad()
    ref_opt.zero_grad()
    for micro in range(2):
        x, y = batch(10 * step + micro, rank)
        loss_of(ours, x, y).backward()
        if micro == 0:
            with ddp.no_sync():
                loss_of(ddp, x, y).backward()
        else:
            loss_of(ddp, x, y).backward()
    opt.step()
    ref_opt.step()
compare("accumulation vs DDP no_sync", ours, ref)
opt.remove_hooks()

# 3. A layer that some ranks skip in some steps: no stall, same result as DDP(find_unused_parameters=True).
ours, ref = make_model(), make_model()
opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.1),
                               named_parameters=ours.named_parameters(), bucket_bytes=4096)
ddp = DDP(ref, find_unused_parameters=True)
ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(STEPS):
    step_both(ours, opt, ddp, ref_opt, step, use_b=rank == 1 or step % 2 == 1)
compare("unused parameters vs DDP", ours, ref)
opt.remove_hooks()

# 4. Unequal batches, weight = local / global batch: equals one process stepping on the whole global batch.
sizes = [3 + 2 * r for r in range(size)]
total = sum(sizes)
ours, ref = make_model(), make_model()
opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.5),
                               named_parameters=ours.named_parameters(), weight=sizes[rank] / total)
ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.5)
for step in range(STEPS):
    parts = [batch(step, r, sizes[r]) for r in range(size)]
    opt.zero_grad()
    loss_of(ours, *parts[rank]).backward()
    opt.step()
    ref_opt.zero_grad()
    loss_of(ref, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])).backward()
    ref_opt.step()
compare("weighted vs full batch", ours, ref, atol=2e-6)
opt.remove_hooks()

# 5. Compression.fp16 in the optimizer: close to dense (16-bit rounding only).
ours, ref = make_model(), make_model()
opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.1),
                               named_parameters=ours.named_parameters(), compression=nrt.Compression.fp16)
ddp = DDP(ref)
ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
for step in range(STEPS):
    step_both(ours, opt, ddp, ref_opt, step)
    assert all(p.grad.dtype == torch.float32 for p in ours.parameters())
compare("fp16 vs DDP", ours, ref, atol=2e-3)
opt.remove_hooks()

# 6. Local momentum (what onebit and int4 use) over exact communication is dense SGD again: the mean of the
# ranks' momentum buffers is the momentum of the mean gradient. Momentum, Nesterov, dampening, weight decay.
for kw in (dict(momentum=0.9, weight_decay=1e-2), dict(momentum=0.9, nesterov=True, weight_decay=1e-2),
           dict(momentum=0.5, dampening=0.3)):
    ours, ref = make_model(), make_model()
    opt = nrt.DistributedOptimizer(torch.optim.SGD(ours.parameters(), lr=0.1, **kw), bucket_bytes=4096,
                                   named_parameters=[(f"local{sorted(kw.items())}.{n}", p)
                                                     for n, p in ours.named_parameters()], local_momentum=True)
    assert opt.local_momentum, f"rank {rank}: local momentum is off for {kw}"
    ddp = DDP(ref)
    ref_opt = torch.optim.SGD(ddp.parameters(), lr=0.1, **kw)
    for step in range(STEPS):
        step_both(ours, opt, ddp, ref_opt, step)
    compare(f"local momentum {kw} vs DDP", ours, ref, atol=2e-6)
    # The wrapped SGD's settings are back after each step; its state holds this rank's own momentum.
    assert opt.param_groups[0]["momentum"] == kw["momentum"], f"rank {rank}: {opt.param_groups[0]}"
    assert "momentum_buffer" in opt.state_dict()["state"][0]
    opt.remove_hooks()
finish()
