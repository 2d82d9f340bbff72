"""CUDA tensors through neptune_rt.torch (staged through pinned host memory): collectives on device tensors
equal the same collectives on CPU copies, DistributedOptimizer on a CUDA model equals a CPU run, and the DDP
hook works on CUDA buckets. Run by tests/torch/test_gpu.py only where a GPU exists."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from common import close, finish, setup

rank, size = setup()
dev = torch.device("cuda", nrt.local_rank() % torch.cuda.device_count())
torch.cuda.set_device(dev)
g = torch.Generator().manual_seed(rank)
x = torch.randn(100_000, generator=g)
# Produce the device tensor on a side stream: staging must wait for that stream's work.
side = torch.cuda.Stream()
with torch.cuda.stream(side):
    xd = x.to(dev, non_blocking=True) * 2
torch.cuda.current_stream().wait_stream(side)
close("cuda allreduce", nrt.allreduce(xd, name="cuda.avg").cpu(), nrt.allreduce(x * 2, name="cpu.avg"))
yd = xd.clone()
nrt.allreduce_(yd, name="cuda.inplace", op=nrt.Sum)
close("cuda allreduce_", yd.cpu(), nrt.allreduce(x * 2, name="cpu.sum", op=nrt.Sum))
close("cuda fp16", nrt.allreduce(xd, name="cuda.fp16", compression=nrt.Compression.fp16).cpu(),
      nrt.allreduce(x * 2, name="cpu.avg2"), atol=0.02)
close("cuda allgather", nrt.allgather(xd[:10], name="cuda.gather").cpu(), nrt.allgather(x[:10] * 2, name="cpu.g"))
close("cuda broadcast", nrt.broadcast(xd, 0, name="cuda.b").cpu(), nrt.broadcast(x * 2, 0, name="cpu.b"))


def train(device: torch.device) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2)).to(device)
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   named_parameters=model.named_parameters())
    for step in range(4):
        gen = torch.Generator().manual_seed(10 * step + rank)
        data = torch.randn(4, 8, generator=gen).to(device)
        opt.zero_grad()
        model(data).pow(2).mean().backward()
        opt.step()
    opt.remove_hooks()
    return [p.detach().cpu() for p in model.parameters()]


for a, b in zip(train(dev), train(torch.device("cpu"))):
    close("DistributedOptimizer cuda vs cpu", a, b, atol=1e-5)

torch.manual_seed(0)
model = nn.Linear(8, 2).to(dev)
ddp = DDP(model, device_ids=[dev.index])
ddp.register_comm_hook(nrt.comm_hook.CommHookState(model), nrt.comm_hook.hook)
ddp(torch.randn(4, 8, device=dev)).sum().backward()
grads = [p.grad.detach().cpu() for p in model.parameters()]
for i, gr in enumerate(grads):
    close(f"DDP hook cuda grads equal across ranks ({i})", gr, nrt.broadcast(gr, 0, name=f"ddp.g{i}"), atol=0)
finish()
