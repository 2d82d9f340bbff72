"""One training run through the neptune_rt DDP hook or DistributedOptimizer with a forced codec (every bucket
quantized), with random delays in the backward pass so that gradients arrive at the engine with different timing
in every run (the delays come from os.urandom, not from the seed). Prints the final parameters' checksum; run
twice by tests/torch/test_reproducibility.py, which requires equal checksums: fusion must follow the
submission, not arrival timing. `python repro_worker.py CODEC STEPS [hook] [optimizer]` trains each path in turn
(a fresh model each) and prints `CHECKSUM <path> <sha256> loss <last loss>`."""
from __future__ import annotations

import hashlib
import os
import random
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from common import finish, setup

codec, steps = sys.argv[1], int(sys.argv[2])
paths = sys.argv[3:] or ["hook"]
rank, size = setup()
jitter = random.Random(os.urandom(8))  # deliberately not seeded: timing differs from run to run


def make_model() -> nn.Module:
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), *layers, nn.Linear(64, 4))


def train(path: str) -> tuple[str, float]:
    """One training run along `path`; (sha256 of the final parameters, the last loss)."""
    model = make_model()
    for p in model.parameters():  # delay some gradients by up to 3 ms, at random
        p.register_hook(lambda g: (time.sleep(jitter.uniform(0, 0.003)) if jitter.random() < 0.5 else None, g)[1])
    if path == "hook":
        ddp = DDP(model, bucket_cap_mb=0.02)  # ~5k floats: several DDP buckets of several parameters each
        state = nrt.comm_hook.CommHookState(model, codec=codec, adaptive=False, prefix="repro")
        ddp.register_comm_hook(state, nrt.comm_hook.hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    elif path == "optimizer":
        ddp = model  # the optimizer's own buckets, of the same ~5k floats: several parameters each
        opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                                       named_parameters=[(f"repro.opt.{n}", p) for n, p in model.named_parameters()],
                                       compression=nrt.Compression.forced(codec), bucket_bytes=20_000,
                                       local_momentum=False)
    else:
        raise SystemExit(f"repro_worker.py: path must be hook or optimizer, got {path!r}")
    for step in range(steps):
        g = torch.Generator().manual_seed(1000 * step + rank)
        x, y = torch.randn(32, 16, generator=g), torch.randint(0, 4, (32,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
    if path == "optimizer":
        opt.remove_hooks()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    digest = hashlib.sha256(flat.numpy().tobytes()).hexdigest()
    gathered = [None] * size
    dist.all_gather_object(gathered, digest)
    assert len(set(gathered)) == 1, f"rank {rank}: ranks ended with different parameters on {path}: {gathered}"
    return digest, loss.item()


for path in paths:
    digest, last_loss = train(path)
    if rank == 0:
        print(f"CHECKSUM {path} {digest} loss {last_loss:.6f}", flush=True)
finish()
