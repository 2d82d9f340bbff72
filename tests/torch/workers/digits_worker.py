"""Trains an MLP on sklearn's load_digits with DistributedOptimizer under each requested compression and prints
the test accuracy (rank 0: `ACC <mode> <percent>`). Same initialization, data order and step count for every
mode, so the accuracies differ only by what compression does. Run by tests/torch/test_compression.py."""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
from sklearn.datasets import load_digits

import neptune_rt.torch as nrt
from common import finish, setup

rank, size = setup(gloo=False)
modes = sys.argv[1:] or ["none", "fp16", "bf16"]
EPOCHS, GLOBAL_BATCH = 12, 64
LR, MOMENTUM = float(os.environ.get("DIGITS_LR", "0.1")), float(os.environ.get("DIGITS_MOMENTUM", "0.9"))

digits = load_digits()
x_all = torch.tensor(digits.data, dtype=torch.float32) / 16.0
y_all = torch.tensor(digits.target)
order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
train_idx, test_idx = order[:1400], order[1400:]
local = GLOBAL_BATCH // size

for mode in modes:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    # "forced:<codec>": the engine quantizes every bucket (no cost-model fallback to dense).
    compression = (nrt.Compression.forced(mode.split(":")[1]) if mode.startswith("forced:")
                   else getattr(nrt.Compression, mode))
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM),
                                   named_parameters=model.named_parameters(), compression=compression)
    for epoch in range(EPOCHS):
        perm = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(epoch))]
        for start in range(0, len(perm) - GLOBAL_BATCH + 1, GLOBAL_BATCH):
            idx = perm[start + rank * local: start + (rank + 1) * local]  # this rank's slice
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_all[idx]), y_all[idx]).backward()
            opt.step()
    opt.remove_hooks()
    with torch.no_grad():
        acc = (model(x_all[test_idx]).argmax(1) == y_all[test_idx]).float().mean().item() * 100
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    same = nrt.allreduce(params, name=f"check.{mode}", op=nrt.Max) - nrt.allreduce(params, name=f"c.{mode}",
                                                                                  op=nrt.Min)
    assert same.abs().max().item() == 0, f"rank {rank}: {mode}: ranks diverged"
    if rank == 0:
        print(f"ACC {mode} {acc:.2f} param_checksum {params.double().abs().sum().item():.9g}", flush=True)
finish()
