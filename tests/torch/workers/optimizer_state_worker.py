"""DistributedOptimizer.state_dict() carries the engine's error-feedback residuals: a run with a forced codec is
interrupted after `SPLIT` steps (model and optimizer state saved on every rank), the engine's residuals are wiped
(as in a fresh process), and a new model and optimizer resume from the saved state; the resumed run must end
bitwise equal to the uninterrupted one. A control resumes without the residuals and must differ, so the
comparison can fail. Run by tests/torch/test_optimizer.py: `python optimizer_state_worker.py CODEC...`."""
from __future__ import annotations

import copy
import hashlib
import sys

import torch
import torch.nn as nn

import neptune_rt.torch as nrt
from neptune_rt import engine
from common import finish, setup

rank, size = setup(gloo=False)
STEPS, SPLIT = 8, 4


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 40), nn.Tanh(), nn.Linear(40, 40), nn.Tanh(), nn.Linear(40, 3))


def make_opt(model: nn.Module, codec: str) -> nrt.DistributedOptimizer:
    return nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                                    named_parameters=model.named_parameters(),
                                    compression=nrt.Compression.forced(codec), bucket_bytes=4000)


def train(model: nn.Module, opt: nrt.DistributedOptimizer, steps: range) -> None:
    for step in steps:
        g = torch.Generator().manual_seed(100 * step + rank)
        x, y = torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def digest(model: nn.Module) -> str:
    return hashlib.sha256(torch.cat([p.detach().flatten() for p in model.parameters()]).numpy().tobytes()).hexdigest()


def wipe_residuals() -> None:
    engine.import_residuals({})  # what a fresh process starts with


def check(codec: str) -> None:
    wipe_residuals()
    model = make_model()
    opt = make_opt(model, codec)
    train(model, opt, range(SPLIT))
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    saved = saved_opt.get("neptune_rt_residuals")
    assert saved is not None and saved["rank"] == rank and saved["size"] == size, \
        f"rank {rank}: {codec}: state_dict() holds no residuals of this rank: {sorted(saved_opt)}"
    names = {f"grad.{n}" for n, _ in model.named_parameters()}
    assert {k[0] for k in saved["residuals"]} == names, \
        f"rank {rank}: {codec}: residuals saved: {sorted(saved['residuals'])}"
    assert any(float(abs(v).max()) > 0 for v in saved["residuals"].values()), \
        f"rank {rank}: {codec}: all residuals are zero"
    train(model, opt, range(SPLIT, STEPS))
    uninterrupted = digest(model)
    opt.remove_hooks()

    def resume(with_residuals: bool) -> str:
        wipe_residuals()
        model = make_model()
        model.load_state_dict(saved_model)
        opt = make_opt(model, codec)
        opt.load_state_dict(saved_opt if with_residuals else
                            {k: v for k, v in saved_opt.items() if k != "neptune_rt_residuals"})
        train(model, opt, range(SPLIT, STEPS))
        opt.remove_hooks()
        return digest(model)

    resumed = resume(True)
    assert resumed == uninterrupted, (f"rank {rank}: {codec}: resuming from state_dict() did not continue "
                                      f"bitwise: {resumed[:12]} != uninterrupted {uninterrupted[:12]}")
    control = resume(False)
    assert control != uninterrupted, (f"rank {rank}: {codec}: resuming without residuals also matched bitwise, "
                                      f"so this test cannot tell whether residuals are restored")


for codec in sys.argv[1:]:
    check(codec)
finish(" ".join(sys.argv[1:]))
