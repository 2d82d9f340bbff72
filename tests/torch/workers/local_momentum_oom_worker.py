"""Local momentum that stops part way through a bucket (an out-of-memory in its first step's buffer clone, which
the Trainer survives): synchronize() then submits the bucket without running the momentum again, so the parameter
it had reached keeps one momentum step (its buffer is its gradient, not 1.9 x it). Run by
tests/torch/test_compression.py."""
from __future__ import annotations

import torch

import neptune_rt.torch as nrt
from common import close, finish, setup

rank, size = setup(gloo=False)
torch.manual_seed(0)
model = torch.nn.Linear(8, 4)
opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                               named_parameters=model.named_parameters(), local_momentum=True)
assert opt.local_momentum
momentum = opt._local_momentum
real_transform = momentum.transform
reached = []


def stops_part_way(params):
    reached.append(params[0])
    real_transform(params[:1])
    raise MemoryError("emulated out of memory inside the local momentum")


x = torch.randn(16, 8, generator=torch.Generator().manual_seed(rank))
want = dict(zip(model.parameters(), torch.autograd.grad(model(x).square().mean(), list(model.parameters()))))
momentum.transform = stops_part_way
try:
    model(x).square().mean().backward()
    raise AssertionError(f"rank {rank}: the emulated out-of-memory did not surface")
except (MemoryError, RuntimeError) as err:  # autograd may wrap a hook's error
    assert "emulated out of memory" in str(err), err
momentum.transform = real_transform
opt.synchronize()
assert len(reached) == 1, f"rank {rank}: {len(reached)} transforms"
buf = opt._opt.state[reached[0]]["momentum_buffer"]
close("momentum buffer of the parameter reached before the out-of-memory", buf, want[reached[0]], atol=0)
finish()
