"""Dynamic batch-size scheduler benchmark on 4 uneven ranks, Fashion-MNIST MLP, run under mpirun:

    mpirun -np 4 --oversubscribe --bind-to none .venv/bin/python benchmarks/hetero.py \\
        --json benchmarks/results/hetero.json

Rank speeds are emulated (neptune_rt.schedule.slowdown_sleep, which the Trainer's --emulate-slowdown uses too):
every sample a rank computes costs it a sleep of `slowdown x --per-sample-ms` on top of the real forward/backward
(sleep takes no CPU, so four ranks on two shared cores stay faithful). Cases:
  static profiles (default 1,1,2,4 and 1,1,1,2, homogeneous 1,1,1,1): an equal split vs the scheduler, same
     seed, data order and steps, the two runs interleaved step by step (A B A B: both see the same load on a
     shared machine); speedup = equal step time / balanced step time (median of the last half),
     against the ideal max(s) * sum(1/s_i) / n; final test accuracy of both.
  change: homogeneous, then rank 3 slows down 4x at step --change-at; steps until the step time is back
     within 10% of its new steady state.
  goodput: time to --target test accuracy with the scheduler choosing the global batch (one run per rule of
     --lr-rule), against fixed global batches (--fixed-batches) for each rule of --fixed-lr-rule (sqrt: the
     fixed multiplier sqrt(B/B0); adascale: the AdaScale gain from the measured noise scale, every step, which
     is what AdaScale at a fixed B is; default: both rules), all interleaved step by step, with a per-step cost of
     --goodput-step-ms (latency, synchronisation) on top. The learning rate --lr is the one for --goodput-base.
     Every run is SGD with --momentum (0.9); the scheduler's efficiency model is told that momentum
     (--efficiency-momentum auto) or another value (0: plain SGD's model, phi alone), one goodput run per value.
One JSON row per run (`impl` "equal", "balanced" (statistics through StatsPipe), "balanced_now" (gathered at once),
"fixed", "goodput"; `lr_rule`); step-part timings (`submit_ms`, `wait_ms`, `observe_ms`, ...); a table on rank 0.
`hetero.py --plot F.json ...` (no mpirun) draws each file's goodput runs: accuracy against time, and the global batch.
"""
from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import neptune_rt.torch as nrt  # noqa: E402
from common import print_table, write_json  # noqa: E402
from neptune_rt.schedule import (BatchScheduler, PlanSampler, StatsPipe, gather_stats_async,  # noqa: E402
                                 integer_split, local_backward, lr_scale, micro_split, micro_weights, slowdown_sleep,
                                 stats_row)

DATA = Path("/usr/share/datasets/fashion-mnist")


def idx(name: str) -> np.ndarray:
    with gzip.open(DATA / name) as fh:
        raw = fh.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load() -> tuple[torch.Tensor, ...]:
    if not DATA.exists():
        sys.exit(f"Fashion-MNIST not found at {DATA}: apt-get install dataset-fashion-mnist")
    xs = [torch.tensor(idx(f).reshape(-1, 784), dtype=torch.float32) / 255.0
          for f in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz")]
    ys = [torch.tensor(idx(f), dtype=torch.long) for f in ("train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
    mean, std = xs[0].mean(), xs[0].std()
    return (xs[0] - mean) / std, ys[0], (xs[1] - mean) / std, ys[1]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    rank, size = nrt.rank(), nrt.size()
    with torch.no_grad():
        part = slice(rank * len(x) // size, (rank + 1) * len(x) // size)
        correct = (model(x[part]).argmax(1) == y[part]).sum().double().reshape(1)
    return float(nrt.allreduce(correct, name="eval.correct", op=nrt.Sum)) / len(x)


class Run:
    """One training run, advanced a step at a time so that runs can be interleaved (A B A B ...): every run then
    sees the same load on this shared machine. policy: "equal" (fixed equal split) or "scheduler";
    slow_at(step) -> per-rank slowdowns; training stops at `steps`, at `target` test accuracy (evaluated every
    --eval-every samples, untimed) or, checked at evaluations, after `max_seconds` of its own training time."""

    def __init__(self, args, data, *, policy: str, slow_at, steps: int, B: int, target: float | None = None,
                 adaptive: bool = False, lr_mult: float = 1.0, max_seconds: float = float("inf"),
                 lr_rule: str = "adascale", base_batch: int | None = None, max_micro: int | None = None,
                 stats: str = "pipe", efficiency_momentum: float | None = None):
        self.args, self.data, self.slow_at, self.max_steps, self.target = args, data, slow_at, steps, target
        self.adaptive, self.max_seconds, self.B = adaptive, max_seconds, B
        # The noise scale is measured in goodput mode and for an AdaScale learning rate at a fixed B != B0.
        self.measure = adaptive or (lr_rule == "adascale" and base_batch not in (None, B))
        self.rank, size = nrt.rank(), nrt.size()
        torch.manual_seed(args.seed)  # the same initial model in every run of one invocation
        self.model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 10))
        self.base_lr = args.lr * lr_mult
        sgd = torch.optim.SGD(self.model.parameters(), lr=self.base_lr, momentum=args.momentum)
        self.opt = nrt.DistributedOptimizer(sgd, named_parameters=self.model.named_parameters())
        self.sched = None
        if policy == "scheduler":
            self.sched = BatchScheduler(size, B, max_micro=max_micro or args.max_micro, adaptive_batch=adaptive,
                                        batch_bounds=(args.min_batch or B, args.max_batch) if adaptive else None,
                                        lr_rule=lr_rule, base_batch=base_batch,
                                        goodput_interval=args.goodput_interval, noise_warmup=args.goodput_interval,
                                        momentum=args.momentum if efficiency_momentum is None else efficiency_momentum)
        self.equal = integer_split([0.0] * size, [1.0] * size, B, [1] * size, [B] * size)
        self.sampler = PlanSampler(len(data[0]), self.rank, size, seed=args.seed + 1)
        # Statistics one step late in the next gradient cycle (StatsPipe), or at once (--stats-exchange now).
        self.pipe = StatsPipe() if self.sched and stats == "pipe" else None
        self.times: list[float] = []
        self.parts: list[tuple[float, ...]] = []
        self.clock, self.samples, self.step_s, self.reached = 0.0, 0, 0.0, None
        self.next_eval = args.eval_every
        self.evals: list[tuple[int, float, float]] = []  # (samples, clock, test accuracy) at each evaluation
        self.done = False

    def step(self) -> None:
        x, y, xt, yt = self.data
        args, sched, opt, model, rank = self.args, self.sched, self.opt, self.model, self.rank
        step = len(self.times)
        batch = self.sampler.next(sched.plan.local_batches if sched else self.equal)
        b = len(batch.indices)
        opt.set_weight(batch.weight(rank))
        for g in opt.param_groups:
            g["lr"] = self.base_lr * (sched.lr_scale if sched else 1.0)
        t0 = time.perf_counter()
        if self.pipe:
            self.pipe.send()  # the previous step's statistics, before backward: in the gradients' engine cycle
        ts = time.perf_counter()
        opt.zero_grad()
        parts = torch.split(torch.as_tensor(batch.indices),
                            micro_split(b, sched.plan.max_micro[rank]) if sched else [b]) if b else []
        slowdown_sleep(self.slow_at(step)[rank], b, args.per_sample_ms / 1e3, args.step_ms / 1e3)
        losses = [lambda p=p, w=w: w * nn.functional.cross_entropy(model(x[p]), y[p])
                  for p, w in zip(parts, micro_weights([len(p) for p in parts]))]
        sq = local_backward(model.parameters(), losses, measure_norm=self.measure) if losses else 0.0
        t1 = time.perf_counter()
        compute = t1 - ts
        wait = gather_stats_async(stats_row(b, compute, sq, -1.0, self.step_s)) if sched and not self.pipe else None
        t2 = time.perf_counter()
        opt.step()
        t3 = t4 = t5 = time.perf_counter()
        avg = -1.0
        if sched:
            avg = float(sum((p.grad.double() ** 2).sum() for p in model.parameters())) if self.measure else -1.0
            t4 = time.perf_counter()
            rows = self.pipe.receive() if self.pipe else wait()
            t5 = time.perf_counter()
            if rows:
                if not self.pipe:
                    for row in rows:
                        row[3] = avg  # the reduced gradient is bit-identical on every rank
                sched.observe(rows)
        self.step_s = time.perf_counter() - t0
        if self.pipe:
            self.pipe.record(stats_row(b, compute, sq, avg, self.step_s))
        # Where the step goes (the scheduler's own cost on identical ranks): submit the statistics row, the
        # optimizer step (gradient all-reduce), the reduced gradient's norm, the wait for the rows, observe().
        self.parts.append((compute, (ts - t0) + (t2 - t1), t3 - t2, t4 - t3, t5 - t4, t0 + self.step_s - t5))
        self.times.append(self.step_s)
        self.clock += self.step_s
        self.samples += batch.global_batch
        if self.target is not None and self.samples >= self.next_eval:  # evaluation is not timed
            self.next_eval += args.eval_every
            # Every stop decision must be the same on all ranks (or one rank would start another run's step):
            # the clock is each rank's own, so the slowest rank's clock decides.
            clock = float(nrt.allreduce(torch.tensor([self.clock], dtype=torch.float64), name="eval.clock",
                                        op=nrt.Max))
            acc = accuracy(model, xt, yt)
            self.evals.append((self.samples, round(clock, 3), acc))
            if acc >= self.target:
                self.reached, self.done = clock, True
            self.done = self.done or clock > self.max_seconds
        self.done = self.done or len(self.times) >= self.max_steps

    def result(self) -> dict:
        sched, tail = self.sched, self.times[len(self.times) // 2:]
        parts = self.parts[len(self.parts) // 2:]
        return {"step_ms": 1e3 * statistics.median(tail), "step_ms_min": 1e3 * min(tail),
                "step_ms_max": 1e3 * max(tail), "steps": len(self.times), "train_s": self.clock,
                "test_acc": accuracy(self.model, self.data[2], self.data[3]), "time_to_target_s": self.reached,
                "samples": self.samples, "evals": self.evals, "step_times_ms": [round(1e3 * t, 2) for t in self.times],
                "plans": [p.describe() for p in sched.history] if sched else [],
                "final_batch": sched.plan.global_batch if sched else self.B,
                "final_split": list(sched.plan.local_batches) if sched else self.equal,
                "final_lr_scale": sched.lr_scale if sched else self.opt.param_groups[0]["lr"] / self.args.lr,
                "noise_scale": sched.noise.value if sched else None,
                **{f"{name}_ms": 1e3 * statistics.median(p[i] for p in parts)
                   for i, name in enumerate(("compute", "submit", "opt_step", "norm", "wait", "observe"))}}


def interleaved(runs: dict[str, Run]) -> dict[str, dict]:
    """Steps all runs in turn, the order rotated every round, until each is done; every run's result."""
    order, turn = list(runs.values()), 0
    while not all(r.done for r in order):
        shift = turn % len(order)
        for run in order[shift:] + order[:shift]:
            if not run.done:
                run.step()
        turn += 1
    return {name: run.result() for name, run in runs.items()}


def plot_goodput(paths: list[str]) -> None:
    """One PNG per JSON, beside it: test accuracy against training seconds for every goodput-case run with its
    evaluations (fixed batches thin, the scheduler bold), and the scheduler's global batch over the same seconds."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("hetero.py --plot needs matplotlib (pip install matplotlib; see README)")
    for path in paths:
        rows = [r for r in json.load(open(path)) if r.get("case") == "goodput" and r.get("evals")]
        if not rows:
            raise SystemExit(f"{path}: no goodput rows with evaluations (rows keep them since 2026-12-03)")
        fig, (acc_ax, batch_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
        for i, r in enumerate(rows):
            scheduler = r["impl"] == "goodput"
            reached = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] else "not reached"
            repeat = re.search(r"\.r(\d+)$", r.get("run") or "")  # keys end in .rK from the second repeat on
            label = (f"scheduler, {r['lr_rule']}, model m={r.get('efficiency_momentum')}"
                     + (f" #{int(repeat[1]) + 1}" if repeat else "") if scheduler
                     else f"fixed B={r['global_batch']}, {r['lr_rule']}") + f": {reached}"
            _, clock, acc = zip(*r["evals"])
            acc_ax.plot(clock, [100 * a for a in acc], marker=".", linewidth=2.2 if scheduler else 1.0,
                        color=f"C{i % 10}", label=label)
            if scheduler:  # the global batch from each plan's first step, on that step's clock
                ends = np.cumsum(r["step_times_ms"]) / 1e3
                found = (re.search(r"from step (\d+): B=(\d+)", p) for p in r["plans"])
                moves = [(int(m[1]), int(m[2])) for m in found]
                xs = [ends[s - 1] if s else 0.0 for s, _ in moves] + [ends[-1]]
                batch_ax.step(xs, [b for _, b in moves] + [moves[-1][1]], where="post", color=f"C{i % 10}", label=label)
        target = rows[0].get("target", 0.85)  # rows before 2026-12-03 do not say: the default then
        acc_ax.axhline(100 * target, color="grey", linestyle=":")
        slowest = max(r["time_to_target_s"] or r["train_s"] for r in rows if r["impl"] == "goodput")
        acc_ax.set_xlim(0, 2.5 * slowest)  # the slowest fixed batches run on past the frame
        acc_ax.set(xlabel="training seconds (evaluation excluded)", ylabel="test accuracy (%)", ylim=(75, 88),
                   title=f"Fashion-MNIST MLP, 4 ranks: time to {100 * target:g}%")
        batch_ax.set(xlabel="training seconds", ylabel="global batch", yscale="log", title="scheduler's global batch")
        acc_ax.legend(fontsize=7)
        batch_ax.legend(fontsize=7)
        out = str(Path(path).with_suffix(".png"))
        fig.savefig(out, dpi=110, bbox_inches="tight")
        print(f"# wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profiles", default="1,1,2,4;1,1,1,2;1,1,1,1")
    ap.add_argument("--cases", default="static,change,goodput")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--global-batch", type=int, default=256)
    ap.add_argument("--per-sample-ms", type=float, default=1.0, help="emulated compute per sample at speed 1")
    ap.add_argument("--step-ms", type=float, default=0.0, help="emulated fixed cost per step (static cases)")
    ap.add_argument("--max-micro", type=int, default=256)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD (heavy-ball) momentum of every run")
    ap.add_argument("--seed", type=int, default=0, help="initial model (seed) and data order (seed + 1) of every run")
    ap.add_argument("--efficiency-momentum", default="auto",
                    help="goodput runs, one per value and rule: the momentum the scheduler's efficiency model is told "
                         "(auto: --momentum; 0: plain SGD's model, phi alone)")
    ap.add_argument("--lr-rule", default="adascale",
                    help="goodput case: the scheduler's lr rules, comma-separated (adascale, sqrt, linear)")
    ap.add_argument("--change-at", type=int, default=40)
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--goodput-base", type=int, default=64, help="starting (and lr-tuned) global batch")
    ap.add_argument("--fixed-batches", default="64,256,1024,4096")
    ap.add_argument("--goodput-per-sample-ms", type=float, default=0.1)
    ap.add_argument("--goodput-step-ms", type=float, default=20.0)
    ap.add_argument("--goodput-interval", type=int, default=5, help="steps between global-batch decisions")
    ap.add_argument("--min-batch", type=int, default=None,
                    help="smallest global batch of the goodput run (default: --goodput-base, as AdaptDL: the batch "
                         "the learning rate was tuned for is the floor)")
    ap.add_argument("--max-batch", type=int, default=4096)
    ap.add_argument("--goodput-max-steps", type=int, default=5000)
    ap.add_argument("--goodput-repeats", type=int, default=1,
                    help="scheduler runs per rule and model, interleaved (their plans differ with the step timings)")
    ap.add_argument("--goodput-max-seconds", type=float, default=120.0, help="training-time cap per goodput run")
    ap.add_argument("--fixed-lr-rule", default="adascale,sqrt",
                    help="lr rules of the fixed-batch runs relative to --goodput-base, comma-separated (sqrt, "
                         "linear: fixed multipliers; adascale: the gain from the measured noise scale)")
    ap.add_argument("--eval-every", type=int, default=8192, help="samples between test evaluations")
    ap.add_argument("--stats-exchange", default="pipe",
                    help="static case: how the scheduler runs exchange statistics, comma-separated: pipe (StatsPipe, "
                         "one step late in the next gradient cycle), now (gather_stats_async after backward)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", nargs="+", metavar="JSON", help="plot the goodput runs of these result files, then exit "
                    "(no mpirun needed)")
    args = ap.parse_args()
    if args.plot:
        return plot_goodput(args.plot)
    torch.set_num_threads(1)
    nrt.init()
    rank, size = nrt.rank(), nrt.size()
    data = load()
    cases = args.cases.split(",")
    rows = []

    def record(row: dict) -> None:
        row["loadavg_1min_after"] = os.getloadavg()[0]  # when the case's (interleaved) runs have ended
        rows.append(row)
        if rank == 0:
            shown = {k: v for k, v in row.items() if k not in ("step_times_ms", "plans")}
            print("#", shown, flush=True)

    load_before = os.getloadavg()[0]  # this machine is shared: every row says how busy it was, before and after
    common = {"np": size, "per_sample_ms": args.per_sample_ms, "loadavg_1min_before": load_before}
    if "static" in cases:
        for text in args.profiles.split(";"):
            slow = [float(v) for v in text.split(",")]
            if len(slow) != size:
                sys.exit(f"profile {text} names {len(slow)} ranks, running {size}")
            ideal = max(slow) * sum(1 / s for s in slow) / size
            kinds = [("equal", "equal", "pipe")] + [("balanced" if mode == "pipe" else f"balanced_{mode}", "scheduler",
                                                     mode) for mode in args.stats_exchange.split(",")]
            runs = interleaved({impl: Run(args, data, policy=policy, slow_at=lambda _s, v=slow: v,
                                          steps=args.steps, B=args.global_batch, stats=mode)
                                for impl, policy, mode in kinds})
            for impl, r in runs.items():
                speedup = runs["equal"]["step_ms"] / r["step_ms"]
                record({"impl": impl, "case": "static", "profile": text, "global_batch": args.global_batch,
                        **common, **r, "speedup": speedup, "ideal_speedup": ideal,
                        "fraction_of_ideal": speedup / ideal if impl != "equal" else None})
    if "change" in cases:
        after = [1.0] * (size - 1) + [4.0]
        slow_at = lambda s: after if s >= args.change_at else [1.0] * size  # noqa: E731
        r = interleaved({"balanced": Run(args, data, policy="scheduler", slow_at=slow_at, steps=args.change_at + 60,
                                         B=args.global_batch)})["balanced"]
        t = r["step_times_ms"]
        steady = statistics.median(t[-20:])
        back = next(i for i in range(args.change_at, len(t)) if all(v <= 1.1 * steady for v in t[i:i + 3]))
        record({"impl": "balanced", "case": "change", "profile": f"1x{size} -> {after}", "change_at": args.change_at,
                **common, **r, "rebalance_steps": back - args.change_at, "steady_ms": steady})
    if "goodput" in cases:
        g = argparse.Namespace(**{**vars(args), "per_sample_ms": args.goodput_per_sample_ms,
                                  "step_ms": args.goodput_step_ms})
        flat = lambda _s: [1.0] * size  # noqa: E731
        common = {"np": size, "per_sample_ms": g.per_sample_ms, "step_cost_ms": g.step_ms, "lr": args.lr,
                  "momentum": args.momentum, "seed": args.seed, "target": args.target,
                  "loadavg_1min_before": load_before}
        fixed = [int(v) for v in args.fixed_batches.split(",")]
        base = args.goodput_base
        runs = {}
        for rule in args.fixed_lr_rule.split(","):
            for B in fixed:
                if B == base and any(k.startswith(f"fixed{B}.") for k in runs):
                    continue  # at B0 every rule gives the same run
                if rule == "adascale" and B != base:
                    runs[f"fixed{B}.{rule}"] = Run(g, data, policy="scheduler", slow_at=flat,
                                                   steps=args.goodput_max_steps, B=B, target=args.target,
                                                   max_seconds=args.goodput_max_seconds, lr_rule=rule, base_batch=base,
                                                   max_micro=B)  # no accumulation, as in the equal fixed runs
                else:
                    runs[f"fixed{B}.{rule}"] = Run(g, data, policy="equal", slow_at=flat, steps=args.goodput_max_steps,
                                                   B=B, target=args.target, lr_mult=lr_scale(rule, 0.0, B, base),
                                                   max_seconds=args.goodput_max_seconds)
        model_momenta = {}
        models = args.efficiency_momentum.split(",")
        if len(set(models)) != len(models) or args.goodput_repeats < 1:
            sys.exit(f"--efficiency-momentum needs distinct values (got {args.efficiency_momentum}; use "
                     f"--goodput-repeats for more runs of one) and --goodput-repeats >= 1 (got {args.goodput_repeats})")
        for rule in filter(None, args.lr_rule.split(",")):  # --lr-rule "": the fixed batches alone
            for text, repeat in itertools.product(models, range(args.goodput_repeats)):
                m = args.momentum if text == "auto" else float(text)
                key = f"goodput.{rule}" + ("" if text == "auto" else f".m{text}") + (f".r{repeat}" if repeat else "")
                model_momenta[key] = m
                runs[key] = Run(g, data, policy="scheduler", slow_at=flat, steps=args.goodput_max_steps, B=base,
                                target=args.target, adaptive=True, lr_rule=rule, max_seconds=args.goodput_max_seconds,
                                efficiency_momentum=m)
        results = interleaved(runs)
        for key, r in results.items():
            impl, rule = key.split(".")[:2]
            record({"impl": "fixed" if impl.startswith("fixed") else "goodput", "case": "goodput", "lr_rule": rule,
                    "global_batch": int(impl[5:]) if impl.startswith("fixed") else base,
                    "efficiency_momentum": model_momenta.get(key), "run": key, **common, **r})
    if rank == 0:
        print_table(rows, [("impl", "impl", "s"), ("case", "case", "s"), ("profile", "profile", "s"),
                           ("lr_rule", "lr_rule", "s"), ("eff_m", "efficiency_momentum", ".2f"),
                           ("B", "final_batch", "d"), ("step(ms)", "step_ms", ".1f"), ("speedup", "speedup", ".2f"),
                           ("ideal", "ideal_speedup", ".2f"), ("test_acc", "test_acc", ".4f"),
                           ("t_target(s)", "time_to_target_s", ".1f"), ("rebal", "rebalance_steps", "d")])
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
