"""OneBitLamb on 4 real ranks; parts (argv, either or both in one launch: `reference digits <mode>...`).
`reference`: warm-up steps (dense averaging) equal LAMB written out here on the mean gradient (decoupled weight
decay, trust ratio clipped at max_trust_ratio), on two tensors of different scale; and a state_dict round trip
after the freeze continues bit for bit; prints `PASSED reference rank <r>`. `digits`: load_digits (MLP 64-64-10,
12 epochs, global batch 64) with OneBitLamb (automatic warm-up end, then onebit) and with dense LAMB (OneBitLamb
whose warm-up never ends); rank 0 prints `ACC <mode> <percent> frozen_at <step>`. Run by
tests/torch/test_onebit_adam.py.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

import neptune_rt.torch as nrt
from common import close, digits_mlp, digits_split, ranks_agree, run_parts, setup, test_accuracy, train_digits

rank, size = setup(gloo=False)
LR = float(os.environ.get("LAMB_LR", "0.02"))


def reference() -> None:
    torch.manual_seed(0)
    start = [10 * torch.randn(40, 30), 0.01 * torch.randn(30)]  # trust ratios ~10 (clipped at 3) and ~0.01
    params = [torch.nn.Parameter(t.clone()) for t in start]
    opt = nrt.OneBitLamb(params, lr=0.05, weight_decay=0.01, warmup_steps=10**6, max_trust_ratio=3.0,
                         name="lamb.ref")
    ref = [t.clone() for t in start]
    m = [torch.zeros_like(t) for t in start]
    v = [torch.zeros_like(t) for t in start]
    b1, b2, eps = 0.9, 0.999, 1e-6
    for t in range(1, 7):
        grads = [[torch.randn(q.shape, generator=torch.Generator().manual_seed(100 * t + 10 * r + i))
                  for i, q in enumerate(start)] for r in range(size)]
        for i, p in enumerate(params):
            p.grad = grads[rank][i].clone()
        opt.step()
        for i in range(len(ref)):
            g = sum(grads[r][i] for r in range(size)) / size
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            u = (m[i] / (1 - b1 ** t)) / ((v[i] / (1 - b2 ** t)).sqrt() + eps) + 0.01 * ref[i]
            ratio = min(ref[i].norm().item() / u.norm().item(), 3.0)
            ref[i] = ref[i] - 0.05 * ratio * u
        for i, p in enumerate(params):
            close(f"OneBitLamb warm-up step {t}, tensor {i}", p, ref[i], atol=1e-6, rtol=1e-6)

    # A round trip after the freeze: a copy restored from state_dict continues bit for bit.
    torch.manual_seed(1)
    model = nn.Linear(300, 20)
    opt = nrt.OneBitLamb(model.parameters(), lr=0.01, warmup_steps=3, name="lamb.rt")
    twin, twin_opt, saved = None, None, None
    for t in range(8):
        x = torch.randn(16, 300, generator=torch.Generator().manual_seed(10 * t + rank))
        if t == 5:
            saved, twin = copy.deepcopy(opt.state_dict()), copy.deepcopy(model)
            twin_opt = nrt.OneBitLamb(twin.parameters(), lr=0.01, warmup_steps=3, name="lamb.rt2")
            twin_opt.load_state_dict(saved)
        for net, o in ((model, opt), (twin, twin_opt)):
            if net is None:
                continue
            o.zero_grad()
            net(x).square().mean().backward()
            o.step()
    assert opt.frozen and twin_opt.frozen
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q), f"rank {rank}: OneBitLamb round trip diverged"


def digits(modes: list[str]) -> None:
    x_all, y_all, train_idx, test_idx = digits_split()
    for mode in modes:
        model = digits_mlp()
        warmup = 10**6 if mode == "lamb" else "auto"
        opt = nrt.OneBitLamb(model.parameters(), lr=LR, warmup_steps=warmup, name=f"lamb.{mode}")
        train_digits(model, opt, x_all, y_all, train_idx, epochs=12, batch=64)
        acc = test_accuracy(model, x_all[test_idx], y_all[test_idx])
        ranks_agree(model, mode)
        if rank == 0:
            print(f"ACC {mode} {acc:.2f} frozen_at {opt.onebit['frozen_at']}", flush=True)


run_parts("reference", reference, digits)
