"""The DDP hook when the engine fails during backward: rank 1's engine fails (injected) while DDP waits on the
hook's futures, and backward raises on every rank with the engine's reason, long before the engine's timeout,
instead of waiting forever (the hook completes its future with the error even though the engine has stopped).
Run by tests/torch/test_comm_hook.py."""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from neptune_rt import engine
from common import setup

rank, size = setup()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 4))
ddp = DDP(model, bucket_cap_mb=0.005)
ddp.register_comm_hook(nrt.comm_hook.CommHookState(model, codec="int8", adaptive=False, prefix="fail"),
                       nrt.comm_hook.hook)
g = torch.Generator().manual_seed(rank)
x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
nn.functional.cross_entropy(ddp(x), y).backward()  # a good step first
dist.barrier()
if rank == 1:
    engine._engine._fail_next_cycle("injected failure for the hook test")
t0 = time.monotonic()
try:
    nn.functional.cross_entropy(ddp(x), y).backward()
except RuntimeError as err:
    assert "injected failure for the hook test" in str(err), f"rank {rank}: {err}"
else:
    raise AssertionError(f"rank {rank}: backward did not raise")
took = time.monotonic() - t0
assert took < 20, f"rank {rank}: the failure took {took:.1f} s to arrive"
print(f"OK rank {rank} after {took:.2f} s", flush=True)
nrt.shutdown()  # returns at once after a failure
dist.barrier()  # every rank prints OK before the first exit handler aborts the job (docs/failures.md)
