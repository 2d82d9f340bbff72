"""The neptune_rt DDP communication hook against DDP's own hooks on the same data: dense equals the default
all-reduce hook (with small buckets, so DDP runs several and rebuilds them after the first iteration), fp16
matches fp16_compress_hook, bf16 stays close, weights give the full-batch gradient for unequal batches, and
unavailable engine codecs are refused up front. Run by tests/torch/test_comm_hook.py."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from neptune_rt import engine
from common import close, finish, setup

rank, size = setup()
STEPS = 5


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))


def batch(step: int, r: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + r)
    return torch.randn(n, 16, generator=g), torch.randint(0, 4, (n,), generator=g)


def train(ddp: nn.Module, sizes: list[int] | None = None) -> nn.Module:
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        x, y = batch(step, rank, sizes[rank] if sizes else 8)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
    return ddp.module


def compare(what: str, ours: nn.Module, ref: nn.Module, atol: float) -> None:
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        close(f"{what}: {n}", p, q, atol=atol)


BUCKET_MB = 0.005  # ~1300 floats: several buckets for this 5.7k-parameter model


def ddp(model: nn.Module, hook=None, state=None) -> DDP:
    wrapped = DDP(model, bucket_cap_mb=BUCKET_MB)
    if hook is not None:
        wrapped.register_comm_hook(state, hook)
    return wrapped


reference = train(ddp(make_model()))
model = make_model()
dense = train(ddp(model, nrt.comm_hook.hook, nrt.comm_hook.CommHookState(model, prefix="dense")))
compare("dense hook vs default hook", dense, reference, atol=1e-6)
# Without a module the hook numbers parameters by first appearance; same result.
unnamed = train(ddp(make_model(), nrt.comm_hook.hook, nrt.comm_hook.CommHookState(prefix="unnamed")))
compare("unnamed dense hook vs default hook", unnamed, reference, atol=1e-6)

fp16_ref = train(ddp(make_model(), default_hooks.fp16_compress_hook, None))
model = make_model()
fp16 = train(ddp(model, nrt.comm_hook.hook, nrt.comm_hook.CommHookState(model, codec="fp16", prefix="fp16")))
compare("fp16 hook vs fp16_compress_hook", fp16, fp16_ref, atol=1e-3)
model = make_model()
bf16 = train(ddp(model, nrt.comm_hook.hook, nrt.comm_hook.CommHookState(model, codec="bf16", prefix="bf16")))
compare("bf16 hook vs default hook", bf16, reference, atol=2e-2)

# Unequal batches with weights: equal to one process training on the concatenated global batch.
sizes = [2 + 3 * r for r in range(size)]
model = make_model()
state = nrt.comm_hook.CommHookState(model, prefix="weighted", weight=sizes[rank] / sum(sizes))
weighted = train(ddp(model, nrt.comm_hook.hook, state), sizes)
full = make_model()
opt = torch.optim.SGD(full.parameters(), lr=0.1, momentum=0.9)
for step in range(STEPS):
    parts = [batch(step, r, sizes[r]) for r in range(size)]
    opt.zero_grad()
    nn.functional.cross_entropy(full(torch.cat([p[0] for p in parts])), torch.cat([p[1] for p in parts])).backward()
    opt.step()
compare("weighted hook vs full batch", weighted, full, atol=2e-6)

# Engine codecs (forced: every bucket quantized): trained when the engine has them, otherwise refused with a
# message naming the codec. Tolerances: a few quantization steps of these weights (|w| < 0.3) after 5 steps.
for codec, atol in (("int8", 2e-3), ("int4", 2e-2), ("onebit", 0.1)):
    if codec in engine.CODECS:
        model = make_model()
        state = nrt.comm_hook.CommHookState(model, codec=codec, prefix=codec, adaptive=False)
        q = train(ddp(model, nrt.comm_hook.hook, state))
        compare(f"{codec} hook vs default hook", q, reference, atol=atol)
    else:
        try:
            nrt.comm_hook.CommHookState(codec=codec)
        except RuntimeError as err:
            assert repr(codec) in str(err) and "not available" in str(err), err
        else:
            raise AssertionError(f"rank {rank}: unavailable codec {codec} accepted")
finish()
