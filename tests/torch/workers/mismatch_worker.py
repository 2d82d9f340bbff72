"""Ranks that disagree fail with a clear error instead of hanging: different parameter sets at
DistributedOptimizer construction, and one rank stepping alone (times out after NEPTUNE_RT_TIMEOUT_SECONDS).
Run by tests/torch/test_mismatch.py with a short timeout."""
from __future__ import annotations

import torch
import torch.nn as nn

import neptune_rt.torch as nrt
from common import finish, setup

rank, size = setup(gloo=False)

# 1. Rank 0 has an extra layer, rank 1 a wider one.
layers = [nn.Linear(4, 4), nn.Linear(4, 8 if rank == 1 else 4)] + ([nn.Linear(4, 4)] if rank == 0 else [])
model = nn.Sequential(*layers)
try:
    nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                             named_parameters=model.named_parameters())
except ValueError as err:
    print(f"MISMATCH rank {rank}: {err}", flush=True)
else:
    raise AssertionError(f"rank {rank}: different parameter sets were accepted")

# 2. Same model everywhere, but rank 0 takes one step more than the others: that step cannot complete. Rank 0
# gets a TimeoutError naming the tensor; its uncaught error then ends the whole job (exit code != 0).
model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                               named_parameters=model.named_parameters())
for step in range(2 if rank == 0 else 1):
    opt.zero_grad()
    model(torch.randn(3, 4)).sum().backward()
    try:
        opt.step()
    except (TimeoutError, RuntimeError) as err:
        print(f"STALLED rank {rank} step {step}: {type(err).__name__}: {err}", flush=True)
        raise
print(f"DONE rank {rank}", flush=True)
finish()
