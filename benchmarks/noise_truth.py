"""Ground truth for the scheduler's gradient-noise-scale estimator on the goodput benchmark's own model (the
Fashion-MNIST MLP 784-256-10 of benchmarks/hetero.py, SGD lr 0.05 momentum 0.9 at B=64), one process, no MPI:

    .venv/bin/python benchmarks/noise_truth.py --json benchmarks/results/noise_truth.json

At a few points of a B=64 training run the weights are frozen and the true |G|^2 (full-training-set mean
gradient) and tr(Sigma) (mean per-sample squared gradient norm minus |G|^2, per-sample norms in closed form for
the two linear layers) are computed exactly; then many random global batches are split over 4 emulated ranks
exactly as the scheduler sees them, and NoiseScale's one-step estimates (S, |G|^2) and the smoothed phi are
compared with the truth. One JSON row per (step, global batch).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402
from hetero import load  # noqa: E402
from neptune_rt.schedule.goodput import NoiseScale  # noqa: E402


def flat_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double()


def per_sample_sq_norms(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|grad of sample i's loss|^2 for Linear-ReLU-Linear: a linear layer's per-sample weight gradient is an
    outer product delta a^T, so its squared norm is |delta|^2 |a|^2 (plus |delta|^2 for the bias)."""
    l1, l2 = model[0], model[2]
    with torch.no_grad():
        pre = l1(x)
        h = torch.relu(pre)
        dz = torch.softmax(l2(h), dim=1)
        dz[torch.arange(len(y)), y] -= 1.0
        dh = (dz @ l2.weight) * (pre > 0)
        sq = lambda v: (v.double() ** 2).sum(1)  # noqa: E731
        return sq(dz) * (sq(h) + 1) + sq(dh) * (sq(x) + 1)


def truth(model: nn.Sequential, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    G = flat_grad(model, x, y)
    mean_sq = float(torch.cat([per_sample_sq_norms(model, x[i:i + 4096], y[i:i + 4096])
                               for i in range(0, len(x), 4096)]).mean())
    g2 = float(G @ G)
    return mean_sq - g2, g2


def check_estimator(model, x, y, B: int, ranks: int, draws: int, rng) -> dict:
    s_hat, g_hat, smooth = [], [], NoiseScale()
    for _ in range(draws):
        idx = torch.as_tensor(rng.choice(len(x), size=B, replace=False))
        parts = idx.chunk(ranks)
        grads = [flat_grad(model, x[p], y[p]) for p in parts]
        sizes = [len(p) for p in parts]
        avg = sum(b / B * g for b, g in zip(sizes, grads))
        norms = [float(g @ g) for g in grads]
        s, g2 = NoiseScale.estimate(norms, sizes, float(avg @ avg))
        s_hat.append(s)
        g_hat.append(g2)
        smooth.observe(norms, sizes, float(avg @ avg))
    return {"S_est": float(np.mean(s_hat)), "S_est_sem": float(np.std(s_hat) / np.sqrt(draws)),
            "G2_est": float(np.mean(g_hat)), "G2_est_sem": float(np.std(g_hat) / np.sqrt(draws)),
            "phi_smoothed": smooth.value}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", default="0,25,100,300,800", help="training steps at B=64 at which to measure")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--draws", type=int, default=60)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, _, _ = load()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    rng = np.random.default_rng(0)
    checkpoints = sorted(int(s) for s in args.steps.split(","))
    rows, step = [], 0
    for stop in checkpoints:
        while step < stop:
            idx = torch.as_tensor(rng.choice(len(x), size=64, replace=False))
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
        S, g2 = truth(model, x, y)
        for B in (int(b) for b in args.batches.split(",")):
            est = check_estimator(model, x, y, B, args.ranks, args.draws, rng)
            row = {"impl": "noise_truth", "step": step, "global_batch": B, "ranks": args.ranks,
                   "draws": args.draws, "S_true": S, "G2_true": g2, "phi_true": S / g2, **est,
                   "phi_est": est["S_est"] / est["G2_est"] if est["G2_est"] > 0 else float("inf")}
            rows.append(row)
            print("#", {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    print_table(rows, [("step", "step", "d"), ("B", "global_batch", "d"), ("S_true", "S_true", ".4g"),
                       ("S_est", "S_est", ".4g"), ("G2_true", "G2_true", ".4g"), ("G2_est", "G2_est", ".4g"),
                       ("phi_true", "phi_true", ".1f"), ("phi_est", "phi_est", ".1f"),
                       ("phi_smooth", "phi_smoothed", ".1f")])
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
