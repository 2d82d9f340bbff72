"""Ground truth for the scheduler's gradient-noise-scale estimator on the goodput benchmark's own model (the
Fashion-MNIST MLP 784-256-10 of benchmarks/hetero.py, SGD lr 0.05 momentum 0.9 at B=64), one process, no MPI:

    .venv/bin/python benchmarks/noise_truth.py --json benchmarks/results/noise_truth.json

At a few points of a B=64 training run the weights are frozen and the true |G|^2 (full-training-set mean
gradient) and tr(Sigma) (mean per-sample squared gradient norm minus |G|^2, per-sample norms in closed form for
the two linear layers) are computed exactly; then many random global batches are split over 4 emulated ranks
exactly as the scheduler sees them, and NoiseScale's one-step estimates (S, |G|^2) and the smoothed phi are
compared with the truth. One JSON row per (step, global batch).

With --hessian, each point also gets McCandlish et al.'s (2018) Hessian-weighted noise scale
B_noise = tr(H Sigma) / (G^T H G), of which the scheduler's phi = tr(Sigma) / |G|^2 ("B_simple") is the H ~ I
approximation: Hessian-vector products (double backward) with H on --hessian-samples training samples, tr(H Sigma)
as the mean of (g_i - G)^T H (g_i - G) over --hessian-draws single-sample gradients g_i (rows: "B_noise",
"gHg_over_g2" = G^T H G / |G|^2 and "trHS_over_trS" = tr(H Sigma) / tr(Sigma); see hessian_noise_scale).
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


def hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """H v, H the Hessian of the mean loss over (x, y), by double backward."""
    params = list(model.parameters())
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    hv = torch.autograd.grad(flat @ v.to(flat.dtype), params)
    return torch.cat([h.reshape(-1) for h in hv]).double()


def hessian_noise_scale(model, x, y, samples: int, draws: int, rng, trace_sigma: float) -> dict:
    """B_noise = tr(H Sigma) / (G^T H G) and its parts (see the module docstring). The per-sample norms are heavy-
    tailed, so tr(H Sigma) from a few dozen samples is noisy; B_noise takes the sampled ratio tr(H Sigma) / tr(Sigma)
    (same samples, far steadier) times the exact tr(Sigma); B_noise_sampled is the raw ratio."""
    G = flat_grad(model, x, y)
    sub = torch.as_tensor(rng.choice(len(x), size=samples, replace=False))
    xs, ys = x[sub], y[sub]
    gHg = float(G @ hvp(model, xs, ys, G))
    quad, sq = [], []
    for i in rng.choice(len(x), size=draws, replace=False):
        d = flat_grad(model, x[i:i + 1], y[i:i + 1]) - G
        quad.append(float(d @ hvp(model, xs, ys, d)))
        sq.append(float(d @ d))
    trHS, trS = float(np.mean(quad)), float(np.mean(sq))
    return {"G2": float(G @ G), "gHg": gHg, "gHg_over_g2": gHg / float(G @ G), "trHS": trHS,
            "trHS_sem": float(np.std(quad) / np.sqrt(draws)), "trS_sampled": trS,
            "trHS_over_trS": trHS / trS,
            "B_noise": trHS / trS * trace_sigma / gHg if gHg > 0 else float("inf"),
            "B_noise_sampled": trHS / gHg if gHg > 0 else float("inf"), "B_simple_sampled": trS / float(G @ G)}


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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="0,25,100,300,800", help="training steps at B=64 at which to measure")
    ap.add_argument("--batches", default="64,256,1024")
    ap.add_argument("--draws", type=int, default=60)
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--hessian", action="store_true", help="also the Hessian-weighted noise scale B_noise")
    ap.add_argument("--hessian-samples", type=int, default=4096, help="training samples H is taken over")
    ap.add_argument("--hessian-draws", type=int, default=64, help="single-sample gradients for tr(H Sigma)")
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
        if args.hessian:
            h = hessian_noise_scale(model, x, y, args.hessian_samples, args.hessian_draws, rng, S)
            row = {"impl": "hessian_noise_scale", "step": step, "S_true": S, "G2_true": g2, "phi_true": S / g2,
                   "hessian_samples": args.hessian_samples, "hessian_draws": args.hessian_draws, **h}
            rows.append(row)
            print("#", {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        for B in (int(b) for b in args.batches.split(",")):
            est = check_estimator(model, x, y, B, args.ranks, args.draws, rng)
            row = {"impl": "noise_truth", "step": step, "global_batch": B, "ranks": args.ranks,
                   "draws": args.draws, "S_true": S, "G2_true": g2, "phi_true": S / g2, **est,
                   "phi_est": est["S_est"] / est["G2_est"] if est["G2_est"] > 0 else float("inf")}
            rows.append(row)
            print("#", {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    if args.hessian:
        print_table([r for r in rows if r["impl"] == "hessian_noise_scale"],
                    [("step", "step", "d"), ("B_simple", "phi_true", ".1f"), ("B_noise", "B_noise", ".1f"),
                     ("gHg/|G|^2", "gHg_over_g2", ".3g"), ("tr(HS)/tr(S)", "trHS_over_trS", ".3g")])
    rows_est = [r for r in rows if r["impl"] == "noise_truth"]
    print_table(rows_est, [("step", "step", "d"), ("B", "global_batch", "d"), ("S_true", "S_true", ".4g"),
                       ("S_est", "S_est", ".4g"), ("G2_true", "G2_true", ".4g"), ("G2_est", "G2_est", ".4g"),
                       ("phi_true", "phi_true", ".1f"), ("phi_est", "phi_est", ".1f"),
                       ("phi_smooth", "phi_smoothed", ".1f")])
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
