#!/usr/bin/env python3
"""The onebit codec study: scale block (32/64/128/256), scale rule and sign rounding, judged by convergence per
byte. One process simulates n ranks exactly as the engine's two-phase compressed all-reduce treats them
(each rank: error feedback, scaled sign per block; the reducing rank of each chunk: mean of the n decoded
contributions, second error feedback, scaled sign again), training load_digits' MLP with SGD momentum 0.9 and
local momentum (what DistributedOptimizer does for onebit), or with 1-bit Adam's compressed phase.

Scale rules: `mean` = mean |x| per block (the codec's scale until this study; for a sign code it is the
least-squares scale, argmin_s |x - s sign(x)|^2); `l2` = |x|_2 / sqrt(block), the block RMS (DeepSpeed's
1-bit Adam; keeps the norm; the engine's codec since this study); `stoch` = stochastic sign, +max|x| with
probability (1 + x / max|x|) / 2 (unbiased, higher variance). The `l2` rule is checked against the engine's
own C++ codec before the study runs; codec blocks start at each chunk, as in the engine (benchmarks/onebit_sim.py).
The `adam` rows follow OneBitAdam: local momentum, u = m/(sqrt(v)+eps) compressed; with the default 30-step
warm-up every 1-bit adam row diverges (results/onebit_blocks.json; docs/torch.md, "Known fragility").

    python benchmarks/onebit_blocks.py --json benchmarks/results/onebit_blocks.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import torch.nn as nn

from onebit_sim import OnebitAllreduce, check_against_codec, rank_gradients


def bits_per_value(block: int) -> float:
    return 1 + 32 / block


def train(args: argparse.Namespace, block: int | None, rule: str, seed: int, optimizer: str) -> dict:
    from sklearn.datasets import load_digits
    digits = load_digits()
    x_all = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y_all = torch.tensor(digits.target)
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[:1400], order[1400:]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    params = list(model.parameters())
    count = sum(p.numel() for p in params)
    n, local = args.ranks, args.batch // args.ranks
    reduce = OnebitAllreduce(count, n, block, "two_phase", rule, seed) if block else None
    moms = [torch.zeros(count) for _ in range(n)]  # each rank's local momentum (SGD) / Adam's m (shared)
    shared_m, v = torch.zeros(count), torch.zeros(count)
    step = 0
    for epoch in range(args.epochs):
        perm = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(100 * seed + epoch))]
        for start in range(0, len(perm) - args.batch + 1, args.batch):
            step += 1
            grads = rank_gradients(model, params, x_all, y_all, perm[start:start + n * local], n)
            with torch.no_grad():
                if optimizer == "sgd":
                    for r in range(n):
                        moms[r] = grads[r].clone() if step == 1 else moms[r].mul_(args.momentum).add_(grads[r])
                    update = (reduce(moms) if reduce else sum(moms)) / n
                    direction = args.lr * update
                else:  # OneBitAdam: dense warm-up, then frozen v, local m_i, u_i = m_i / denom compressed
                    b1, b2 = 0.9, 0.999
                    if reduce is None or step <= args.warmup:
                        g = sum(grads) / n
                        shared_m.lerp_(g, 1 - b1)
                        v.mul_(b2).addcmul_(g, g, value=1 - b2)
                        t_v = step
                        moms = [shared_m.clone() for _ in range(n)]
                        denom = (v.sqrt() / (1 - b2 ** t_v) ** 0.5).add_(1e-8)
                        u = shared_m / denom
                    else:
                        for r in range(n):
                            moms[r].lerp_(grads[r], 1 - b1)
                        u = reduce([m / denom for m in moms]) / n
                    direction = args.adam_lr / (1 - b1 ** step) * u
                offset = 0
                for p in params:
                    p -= direction[offset:offset + p.numel()].view_as(p)
                    offset += p.numel()
    with torch.no_grad():
        acc = (model(x_all[test_idx]).argmax(1) == y_all[test_idx]).float().mean().item() * 100
        loss = nn.functional.cross_entropy(model(x_all[train_idx]), y_all[train_idx]).item()
    row = {"impl": "simulated_two_phase", "optimizer": optimizer, "block": block or 0,
           "scale": rule if block else "dense", "seed": seed, "steps": step, "test_acc": round(acc, 2),
           "train_loss": round(loss, 5), "bits_per_value": bits_per_value(block) if block else 32.0}
    if reduce:
        row["worker_error_norm"] = round(float(sum(w.norm() for w in reduce.residual) / n), 5)
        # of the mean, not the sum
        row["server_error_norm"] = round(float(sum(s.norm() for s in reduce.server) / n / n), 5)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", default="32,64,128,256")
    ap.add_argument("--rules", default="mean,l2,stoch")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--optimizers", default="sgd,adam")
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--adam-lr", type=float, default=0.003)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    check_against_codec()
    rows = []
    blocks = [int(b) for b in args.blocks.split(",")]
    cases = [(None, "dense")] + list(itertools.product(blocks, args.rules.split(",")))
    print(f"{'opt':>5} {'block':>5} {'scale':>6} {'bits/val':>8} {'acc mean':>8} {'acc min':>7} {'loss mean':>9} "
          f"{'|e_w|':>7} {'|e_s|':>7}")
    for optimizer in args.optimizers.split(","):
        for block, rule in cases:
            t0 = time.time()
            runs = [train(args, block, rule, seed, optimizer) for seed in range(args.seeds)]
            rows += runs
            acc = [r["test_acc"] for r in runs]
            loss = [r["train_loss"] for r in runs]
            ew = np.mean([r.get("worker_error_norm", 0) for r in runs])
            es = np.mean([r.get("server_error_norm", 0) for r in runs])
            print(f"{optimizer:>5} {block or '-':>5} {rule:>6} {runs[0]['bits_per_value']:8.3f} {np.mean(acc):8.2f} "
                  f"{min(acc):7.2f} {np.mean(loss):9.5f} {ew:7.3f} {es:7.3f}   ({time.time() - t0:.0f} s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
