"""broadcast_parameters / broadcast_optimizer_state make every rank identical; join() lets ranks with fewer
batches stop early while the others keep training, matching a single-process reference.
Run by tests/torch/test_broadcast_join.py."""
from __future__ import annotations

import torch
import torch.nn as nn

import neptune_rt.torch as nrt
from common import close, finish, setup

rank, size = setup(gloo=False)


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))


# 1. Different initializations everywhere; after broadcast_parameters(state_dict) all equal rank 2's.
torch.manual_seed(rank)
model = net()
model(torch.randn(5, 6))  # moves BatchNorm running stats, so buffers differ too
nrt.broadcast_parameters(model.state_dict(), root_rank=2)
everyone = nrt.allgather_object({k: v.clone() for k, v in model.state_dict().items()})
for r, theirs in enumerate(everyone):
    for k, v in theirs.items():
        close(f"state_dict[{k}] vs rank {r}", model.state_dict()[k], v, atol=0)
torch.manual_seed(2)
root_model = net()
root_model(torch.randn(5, 6))
for k, v in root_model.state_dict().items():
    close(f"state_dict[{k}] is root's", model.state_dict()[k], v, atol=0)

# named_parameters() works too.
torch.manual_seed(10 + rank)
model2 = net()
nrt.broadcast_parameters(model2.named_parameters(), root_rank=0)
ref = nrt.broadcast_object(model2.state_dict() if rank == 0 else None, root_rank=0)
for n, p in model2.named_parameters():
    close(f"named parameter {n}", p, ref[n], atol=0)

# 2. Optimizer state: only rank 0 has stepped (Adam state exists there only) and uses another lr.
opt = torch.optim.AdamW(model.parameters(), lr=0.01 if rank == 0 else 0.5, weight_decay=0.1)
if rank == 0:
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(4, 6)).sum().backward()
        opt.step()
before = [p.detach().clone() for p in model.parameters()]
nrt.broadcast_optimizer_state(opt, root_rank=0)
if rank != 0:  # no dummy step: non-root parameters are untouched
    for p, q in zip(model.parameters(), before):
        close("parameters untouched by broadcast_optimizer_state", p, q, atol=0)
assert opt.param_groups[0]["lr"] == 0.01, f"rank {rank}: lr {opt.param_groups[0]['lr']}"
states = nrt.allgather_object(opt.state_dict())
for r, sd in enumerate(states):
    assert sd["state"].keys() == opt.state_dict()["state"].keys(), f"rank {rank}: state keys differ from {r}"
    for i, st in sd["state"].items():
        for key, v in st.items():
            close(f"optimizer state {i}.{key} vs rank {r}", opt.state_dict()["state"][i][key], v, atol=0)

# 3. join with uneven batch counts: rank r has 2 + r batches. After join, broadcast from the last rank.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
reference = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))
reference.load_state_dict(model.state_dict())
opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.2),
                               named_parameters=model.named_parameters())
ref_opt = torch.optim.SGD(reference.parameters(), lr=0.2)


def data(step: int, r: int) -> torch.Tensor:
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(100 * step + r))


counts = [2 + r for r in range(size)]
for step in range(counts[rank]):
    opt.zero_grad()
    model(data(step, rank)).pow(2).mean().backward()
    opt.step()
last = nrt.join()
assert last == size - 1, f"rank {rank}: join returned {last}"
nrt.broadcast_parameters(model.state_dict(), root_rank=last)
# Reference: at each step, the average over the ranks still training (joined ranks are not counted).
for step in range(max(counts)):
    active = [r for r in range(size) if counts[r] > step]
    grads = []
    for r in active:
        reference.zero_grad()
        reference(data(step, r)).pow(2).mean().backward()
        grads.append([p.grad.clone() for p in reference.parameters()])
    for i, p in enumerate(reference.parameters()):
        p.grad = sum(g[i] for g in grads) / len(active)
    ref_opt.step()
for (n, p), q in zip(model.named_parameters(), reference.parameters()):
    close(f"after join: {n}", p, q, atol=1e-6)
finish()
