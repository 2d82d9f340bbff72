"""Critical batch of heavy-ball SGD in the noisy quadratic model (NQM; Zhang et al., NeurIPS 2019), exactly:
how much larger momentum m makes it than plain SGD's, against the 1 / (1 - m) that goodput's efficiency model
assumes (neptune_rt.schedule.critical_batch).

    .venv/bin/python benchmarks/nqm_momentum.py --json benchmarks/results/nqm_momentum.json

The model: loss sum_i h_i x_i^2 / 2 with h_i = 1/i (--dims of them), per-sample gradient noise of variance c_i = h_i
(noise shaped like the curvature, as in the NQM paper), x_i = 1 at the start, target --target x the initial loss.
The expected loss of SGD with momentum is exact: per dimension the second moments (E x_t^2, E x_t x_{t-1},
E x_{t-1}^2) follow v_{t+1} = M v_t + n, solved in closed form through M's eigenvalues, and read on a geometric grid
of steps. For each m the learning rate is tuned (best of a geometric grid) separately at batch 1 and at an
infinite batch: Emin = the samples to target at batch 1, Smin = the steps at no noise, critical batch = Emin / Smin
(McCandlish et al. 2018: (S/Smin - 1)(E/Emin - 1) = 1). The figures move by up to ~20% with the grids (--lrs, and
the steps read); tests/schedule/test_goodput.py uses it at m = 0.9 on coarser grids. `--check` compares the closed
form with direct iteration of the recursion (benchmarks/results/nqm_momentum_check.json).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def expected_loss(h: np.ndarray, c: np.ndarray, lr: float, momentum: float, batch: float,
                  steps: np.ndarray) -> np.ndarray | None:
    """E[L(x_t)] at each entry of `steps`, in closed form (None if the lr diverges)."""
    a, b = 1.0 + momentum - lr * h, momentum
    M = np.zeros((len(h), 3, 3))
    M[:, 0, 0], M[:, 0, 1], M[:, 0, 2] = a * a, -2.0 * a * b, b * b  # E x_{t+1}^2
    M[:, 1, 0], M[:, 1, 1] = a, -b  # E x_{t+1} x_t
    M[:, 2, 0] = 1.0  # E x_t^2, the next step's lag
    w, V = np.linalg.eig(M)
    if np.max(np.abs(w)) >= 1.0:
        return None
    # Near critical damping (a^2 = 4m) M is nearly a Jordan block and V ill-conditioned; `--check` compares such a
    # case with direct iteration (benchmarks/results/nqm_momentum_check.json). Refuse anything worse than 1e12.
    if np.max(np.linalg.cond(V)) > 1e12:
        raise ArithmeticError(f"lr {lr}, momentum {momentum}: M is nearly defective; use another lr grid")
    noise = np.zeros((len(h), 3))
    noise[:, 0] = lr * lr * c / batch
    fixed = np.linalg.solve(np.eye(3)[None] - M, noise[..., None])[..., 0]
    coef = np.linalg.solve(V, (np.ones((len(h), 3)) - fixed)[..., None].astype(complex))[..., 0]
    powers = w[:, None, :] ** steps[None, :, None].astype(float)
    x2 = np.einsum("dk,dtk,dk->dt", V[:, 0, :], powers, coef).real + fixed[:, :1]
    return 0.5 * (h[:, None] * x2).sum(0)


def iterated_loss(h: np.ndarray, c: np.ndarray, lr: float, momentum: float, batch: float,
                  steps: np.ndarray) -> np.ndarray:
    """The same expected loss by stepping the second-moment recursion one step at a time (the reference)."""
    a, b = 1.0 + momentum - lr * h, momentum
    x2, cross, lag = np.ones(len(h)), np.ones(len(h)), np.ones(len(h))
    out, wanted = [], set(int(t) for t in steps)
    for t in range(1, int(max(steps)) + 1):
        x2, cross, lag = a * a * x2 - 2 * a * b * cross + b * b * lag + lr * lr * c / batch, a * x2 - b * cross, x2
        if t in wanted:
            out.append(0.5 * (h * x2).sum())
    return np.array(out)


def steps_to_target(h: np.ndarray, c: np.ndarray, lr: float, momentum: float, batch: float, target: float,
                    steps: np.ndarray) -> float:
    """First entry of `steps` at which the expected loss is <= target (inf if none, or if the lr diverges)."""
    loss = expected_loss(h, c, lr, momentum, batch, steps)
    hit = np.nonzero(loss <= target)[0] if loss is not None else []
    return float(steps[hit[0]]) if len(hit) else np.inf


def critical_batch_nqm(momentum: float, dims: int = 1000, target: float = 0.01, lrs: int = 24,
                       points: int = 300) -> dict:
    """Emin, Smin and the critical batch Emin / Smin of heavy-ball SGD with `momentum` (lr tuned at each end)."""
    h = 1.0 / np.arange(1, dims + 1)
    goal = target * 0.5 * h.sum()
    grid = np.geomspace(1e-5, 4.0, lrs)
    steps = np.unique(np.geomspace(1, 1e8, points).astype(np.int64))
    emin = min(steps_to_target(h, h, lr, momentum, 1.0, goal, steps) for lr in grid)
    smin = min(steps_to_target(h, h, lr, momentum, np.inf, goal, steps) for lr in grid)
    return {"momentum": momentum, "dims": dims, "target": target, "lr_grid": lrs, "emin_samples": emin,
            "smin_steps": smin, "critical_batch": emin / smin}


def check_rows() -> list[dict]:
    """Closed form against direct iteration, 1000 dimensions, batch 1: a well-conditioned case and the nearly
    defective one the deep-target run meets (m = 0.95, lr 0.0442: cond(V) about 3e8)."""
    h = 1.0 / np.arange(1, 1001)
    steps = np.array([1, 10, 100, 1000, 10000, 100000])
    rows = []
    for lr, m in ((0.05, 0.9), (0.044236939574205596, 0.95)):
        closed, iterated = expected_loss(h, h, lr, m, 1.0, steps), iterated_loss(h, h, lr, m, 1.0, steps)
        rows.append({"lr": lr, "momentum": m, "steps": steps.tolist(),
                     "max_relative_error": float(np.max(np.abs(closed - iterated) / iterated))})
    return rows


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import print_table, write_json
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--momenta", default="0,0.5,0.9,0.95")
    ap.add_argument("--dims", default="100,1000", help="condition numbers h_1 / h_d (one run per value)")
    ap.add_argument("--target", type=float, default=0.01, help="target loss over the initial loss")
    ap.add_argument("--lrs", type=int, default=64, help="learning rates tried (geometric, 1e-5 to 4)")
    ap.add_argument("--check", action="store_true", help="only compare the closed form with direct iteration")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.check:
        rows = check_rows()
        print_table(rows, [("lr", "lr", ".4f"), ("momentum", "momentum", ".2f"),
                           ("max rel err", "max_relative_error", ".1e")])
        return write_json(args.json, rows)
    rows = []
    momenta = [float(v) for v in args.momenta.split(",")]
    for dims in (int(v) for v in args.dims.split(",")):
        plain = critical_batch_nqm(0.0, dims, args.target, args.lrs, points=800)["critical_batch"]
        for m in momenta:
            row = critical_batch_nqm(m, dims, args.target, args.lrs, points=800)
            rows.append({**row, "vs_plain_sgd": row["critical_batch"] / plain, "model_1_over_1_minus_m": 1 / (1 - m)})
    print_table(rows, [("dims", "dims", "d"), ("momentum", "momentum", ".2f"), ("Emin", "emin_samples", ".0f"),
                       ("Smin", "smin_steps", ".0f"), ("B_crit", "critical_batch", ".0f"),
                       ("vs_sgd", "vs_plain_sgd", ".2f"), ("1/(1-m)", "model_1_over_1_minus_m", ".2f")])
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
