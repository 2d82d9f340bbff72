"""Trains an MLP on sklearn's load_digits on every rank under each requested mode and prints the test
accuracy (rank 0: `ACC <mode> <percent> param_checksum <sum |p|>`). A mode is `<optimizer>/<compression>`:
optimizer `sgd` (momentum DIGITS_MOMENTUM), `nesterov`, `adam` (all wrapped in DistributedOptimizer) or
`onebitadam` (neptune_rt.torch.OneBitAdam, compression ignored); compression `none`, `fp16`, `bf16` or
`forced:<codec>` (every bucket quantized, no cost-model fallback) or `auto` (the cost model chooses; with SGD
momentum that is local momentum and the engine's "auto_lowbit"). Same initialization, data order and step
count for every mode; each mode names its engine tensors afresh (`<mode>.<param>`), so no mode starts from an
earlier mode's error-feedback residuals. DIGITS_HIDDEN sets the hidden width (64), and a mode's own suffix
`@<width>` overrides it (1024 makes the gradients one 300 KB bucket, above the engine's 256 KB floor for
compression). Rank 0 also prints
`CODECS <mode> <local_momentum> <engine codec> <codec>=<buckets>...` (the codecs the engine used for the mode).
Run by tests/torch/test_compression.py."""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import neptune_rt.torch as nrt
from neptune_rt import engine as nrt_engine
from common import digits_mlp, digits_split, finish, ranks_agree, setup, test_accuracy, train_digits

rank, size = setup(gloo=False)
modes = sys.argv[1:] or ["sgd/none", "sgd/fp16", "sgd/bf16"]
EPOCHS, GLOBAL_BATCH = 12, 64
LR, MOMENTUM = float(os.environ.get("DIGITS_LR", "0.1")), float(os.environ.get("DIGITS_MOMENTUM", "0.9"))
ADAM_LR = float(os.environ.get("DIGITS_ADAM_LR", "0.003"))
HIDDEN = int(os.environ.get("DIGITS_HIDDEN", "64"))

x_all, y_all, train_idx, test_idx = digits_split()


def make_optimizer(mode: str, model: nn.Module) -> torch.optim.Optimizer:
    kind, _, comp = mode.partition("@")[0].partition("/")
    if kind == "onebitadam":
        return nrt.OneBitAdam(model.parameters(), lr=ADAM_LR, name=f"{mode}.onebitadam")
    if kind == "adam":
        inner = torch.optim.Adam(model.parameters(), lr=ADAM_LR)
    elif kind in ("sgd", "nesterov"):
        inner = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, nesterov=kind == "nesterov")
    else:
        raise ValueError(f"unknown optimizer in mode {mode!r}")
    # "forced:<codec>": the engine quantizes every bucket (no cost-model fallback to dense).
    compression = (nrt.Compression.forced(comp.split(":")[1]) if comp.startswith("forced:")
                   else getattr(nrt.Compression, comp))
    named = [(f"{mode}.{n}", p) for n, p in model.named_parameters()]  # fresh engine names per mode
    return nrt.DistributedOptimizer(inner, named_parameters=named, compression=compression)


for mode in modes:
    model = digits_mlp(int(mode.partition("@")[2] or HIDDEN))
    opt = make_optimizer(mode, model)
    codecs_before = dict(nrt_engine.stats()["codecs"])
    train_digits(model, opt, x_all, y_all, train_idx, EPOCHS, GLOBAL_BATCH)
    if hasattr(opt, "remove_hooks"):
        opt.remove_hooks()
    acc = test_accuracy(model, x_all[test_idx], y_all[test_idx])
    params = ranks_agree(model, mode)
    extra = f" frozen_at {opt.onebit['frozen_at']}" if hasattr(opt, "onebit") else ""
    used = {c: n - codecs_before.get(c, 0) for c, n in nrt_engine.stats()["codecs"].items()
            if n - codecs_before.get(c, 0) > 0}
    if rank == 0:
        print(f"ACC {mode} {acc:.2f} param_checksum {params.double().abs().sum().item():.9g}{extra}", flush=True)
        print(f"CODECS {mode} {getattr(opt, 'local_momentum', False)} {getattr(opt, '_compression', None)} "
              + " ".join(f"{c}={n}" for c, n in sorted(used.items())), flush=True)
finish()
