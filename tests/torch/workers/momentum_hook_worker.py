"""The DDP hook with local momentum (CommHookState(momentum=...)), on 4 ranks. Parts (argv, either or both in
one launch: `exact digits <mode>...`):
`exact`: with exact communication (codec none, and fp32) the hook + SGD(momentum, weight_decay) is plain DDP +
the same SGD, parameter for parameter (several small buckets, rebuilt by DDP after the first step); plus the
refusals (Nesterov, dampening, a mismatched optimizer); prints `PASSED exact rank <r>`. `digits <mode>...`:
trains load_digits as digits_worker.py does (MLP 64-64-10, 12 epochs, global batch 64, SGD lr 0.1 momentum 0.9)
with DDP and prints `ACC <mode> <percent>` on rank 0; a mode is `ddp` (DDP's default hook) or
`<codec>:<hook momentum>` (the neptune_rt hook, codec forced, e.g. `onebit:0.9`; `onebit:0` is the hook without
local momentum). Run by tests/torch/test_comm_hook.py."""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt
from common import close, digits_mlp, digits_split, ranks_agree, run_parts, setup, test_accuracy, train_digits

rank, size = setup()


def exact() -> None:
    def make_model() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 4))

    def train(model: nn.Module, state: nrt.comm_hook.CommHookState | None) -> torch.optim.Optimizer:
        ddp = DDP(model, bucket_cap_mb=0.005)  # ~1300 floats: several buckets, rebuilt after the first step
        if state is not None:
            ddp.register_comm_hook(state, nrt.comm_hook.hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
        if state is not None:
            state.check_optimizer(opt)
        for step in range(8):
            g = torch.Generator().manual_seed(100 * step + rank)
            x, y = torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(ddp(x), y).backward()
            opt.step()
        return opt

    reference = make_model()
    train(reference, None)
    model = make_model()
    state = nrt.comm_hook.CommHookState(model, prefix="exact", momentum=0.9, weight_decay=0.01)
    opt = train(model, state)
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        close(f"momentum hook (codec none) vs DDP: {n}", p, q, atol=1e-6)
        # The identity the hook rests on: SGD's momentum buffer is the hook's averaged local momentum.
        close(f"SGD's momentum buffer vs the hook's: {n}", opt.state[p]["momentum_buffer"],
              state.momentum.buffers[f"exact.{n}"].view_as(p), atol=1e-6)
    # A restart: a fresh state takes ū_prev from the optimizer's momentum buffers.
    fresh = nrt.comm_hook.CommHookState(model, prefix="exact", momentum=0.9, weight_decay=0.01)
    fresh.restore_momentum(opt)
    assert fresh.momentum.buffers.keys() == state.momentum.buffers.keys()
    for name, buf in state.momentum.buffers.items():
        close(f"restored momentum of {name}", fresh.momentum.buffers[name], buf, atol=1e-6)
    refusals = ((dict(momentum=0.9, nesterov=True), "Nesterov"), (dict(momentum=0.9, dampening=0.1), "dampening"),
                (dict(weight_decay=0.01), "only with momentum"), (dict(momentum=1.0), r"in \(0, 1\)"))
    for kw, words in refusals:
        try:
            nrt.comm_hook.CommHookState(prefix="refused", **kw)
        except ValueError as err:
            assert re.search(words, str(err)), err
        else:
            raise AssertionError(f"rank {rank}: CommHookState({kw}) accepted")
    state = nrt.comm_hook.CommHookState(prefix="check", momentum=0.9)
    try:
        state.check_optimizer(torch.optim.SGD(make_model().parameters(), lr=0.1, momentum=0.5))
    except ValueError as err:
        assert "momentum" in str(err) and "param group 0" in str(err), err
    else:
        raise AssertionError(f"rank {rank}: check_optimizer accepted momentum 0.5 for a hook built for 0.9")


def digits(modes: list[str]) -> None:
    x_all, y_all, train_idx, test_idx = digits_split()
    for mode in modes:
        model = digits_mlp()
        ddp = DDP(model)
        if mode != "ddp":
            codec, beta = mode.split(":")
            ddp.register_comm_hook(nrt.comm_hook.CommHookState(model, codec=codec, adaptive=False,
                                                               prefix=f"digits.{mode}", momentum=float(beta)),
                                   nrt.comm_hook.hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
        curve = []
        train_digits(ddp, opt, x_all, y_all, train_idx, epochs=12, batch=64,
                     after_epoch=lambda: curve.append(test_accuracy(model, x_all[test_idx], y_all[test_idx])))
        acc = curve[-1]
        if rank == 0:
            print(f"CURVE {mode} " + " ".join(f"{a:.2f}" for a in curve), flush=True)
        params = ranks_agree(model, mode)
        if rank == 0:
            print(f"ACC {mode} {acc:.2f} param_checksum {params.double().abs().sum().item():.9g}", flush=True)


run_parts("exact", exact, digits)
