"""Local momentum's sync, under mpirun: forced onebit, SGD momentum 0.9, a few steps on load_digits. After each
step every rank's momentum buffer must be the averaged update it applied (`.grad` after synchronize(), compared
bit for bit) and the same on every rank (gathered with mpi4py); then (variant "nosync") LocalMomentum with
sync=False, checking the opposite (the buffers differ: compression really is on). With Nesterov the buffers
stay local. `python onebit_momentum_worker.py [sync] [nosync]` (default: both, in one launch). Run by
tests/torch/test_compression.py."""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn as nn
from mpi4py import MPI
from neptune_rt.train.datasets import digits_arrays  # sklearn's load_digits, without importing sklearn

import neptune_rt.torch as nrt
import neptune_rt.torch.onebit_momentum as onebit_momentum
from common import finish, setup

rank, size = setup(gloo=False)
variants = sys.argv[1:] or ["sync", "nosync"]
digits_data, digits_target = digits_arrays()
x = torch.tensor(digits_data, dtype=torch.float32) / 16.0
y = torch.tensor(digits_target)


def buffers_agree(opt: torch.optim.Optimizer, model: nn.Module) -> bool:
    flat = torch.cat([opt.state[p]["momentum_buffer"].reshape(-1) for p in model.parameters()]).numpy()
    every = MPI.COMM_WORLD.allgather(flat.tobytes())
    return all(b == every[0] for b in every)


for sync, nesterov in [(v == "sync", nesterov) for v in variants for nesterov in (False, True)]:
    onebit_momentum.SYNC_MOMENTUM = sync  # read when DistributedOptimizer builds its LocalMomentum
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    tag = f"sync{int(sync)}.nest{int(nesterov)}"
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=nesterov),
                                   named_parameters=[(f"{tag}.{n}", p) for n, p in model.named_parameters()],
                                   compression=nrt.Compression.forced("onebit"))
    assert opt.local_momentum, f"rank {rank}: local momentum is off"
    for step in range(4):
        idx = torch.arange(64 * step + 16 * rank, 64 * step + 16 * (rank + 1))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.synchronize()
        applied = [p.grad.clone() for p in model.parameters()]
        with opt.skip_synchronize():
            opt.step()
        agree = buffers_agree(opt, model)
        if sync and not nesterov:
            for p, u in zip(model.parameters(), applied):
                buf = opt.state[p]["momentum_buffer"]
                assert torch.equal(buf, u), (f"rank {rank} step {step}: momentum buffer is not the applied update "
                                             f"(max diff {float((buf - u).abs().max())})")
            assert agree, f"rank {rank} step {step}: momentum buffers differ between ranks"
        elif step > 0:  # each rank's own buffer: different data, so different buffers
            assert not agree, f"rank {rank} step {step}: buffers agree across ranks (sync={sync}, nesterov={nesterov})"
    assert np.isfinite(sum(float(p.sum()) for p in model.parameters()))
    opt.remove_hooks()
finish(" ".join(variants))
