#!/usr/bin/env python3
"""End-to-end training race: time to a target test accuracy for torch DDP over gloo (default, fp16 and
PowerSGD hooks) and neptune_rt (DistributedOptimizer, the DDP hook, and the DDP hook with local momentum, per
codec; auto = the cost model's choice), on Fashion-MNIST with an
MLP 784-1024-1024-10, global batch 256, SGD lr 0.05 momentum 0.9. Run it under mpirun, normally inside the
emulated cluster (one rank per node):

    python benchmarks/cluster.py --nodes 4 --rate 1gbit --timeout 1800 -- \\
        .venv/bin/python benchmarks/race.py --repeats 2 --json benchmarks/results/race_1gbit.json --link 1gbit
    python benchmarks/race.py --plot benchmarks/results/race_1gbit.json    # time-to-accuracy plot (PNG)

Implementations run interleaved (every repeat runs each impl once, the order rotated per repeat), each from the
same initial weights and data order. Training seconds exclude evaluation: the clock stops while the test set is
evaluated every `--eval-every` steps (each rank scores a quarter; the counts are summed). A run ends at the
target accuracy, or at `--max-seconds` of training or `--max-epochs`. One JSON row per run: `impl`, `link`,
`repeat`, `time_to_target_s` (null if not reached), `steps_to_target`, `final_acc`, `steps`, `train_s`,
`step_ms` (median), `codecs` (the engine's buckets per codec used in the run, including the evaluation's small
dense all-reduces), `curve` ([train seconds, accuracy] pairs), and rows with `summary: true` holding the median
per impl. Fashion-MNIST is read from /usr/share/datasets/fashion-mnist/ (Debian's dataset-fashion-mnist).
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

DATA = Path("/usr/share/datasets/fashion-mnist")
DDP_IMPLS = ("ddp_default", "ddp_fp16", "ddp_powersgd")
NRT_CODECS = ("none", "onebit", "int4", "int8", "auto")
# nrt_hook_*: the DDP hook on raw gradients; nrt_mhook_*: the hook with local momentum (CommHookState(momentum=)).
ALL_IMPLS = (DDP_IMPLS + tuple(f"nrt_opt_{c}" for c in NRT_CODECS) + tuple(f"nrt_hook_{c}" for c in NRT_CODECS[1:])
             + tuple(f"nrt_mhook_{c}" for c in NRT_CODECS[1:]))


def load_idx(name: str) -> np.ndarray:
    with gzip.open(DATA / name, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not DATA.exists():
        raise SystemExit(f"race.py: {DATA} is missing: apt-get install dataset-fashion-mnist")
    xs = [torch.tensor(load_idx(f"{p}-images-idx{3}-ubyte.gz").reshape(-1, 784), dtype=torch.float32) / 255.0
          for p in ("train", "t10k")]
    ys = [torch.tensor(load_idx(f"{p}-labels-idx1-ubyte.gz").astype(np.int64)) for p in ("train", "t10k")]
    mean, std = xs[0].mean(), xs[0].std()
    return (xs[0] - mean) / std, ys[0], (xs[1] - mean) / std, ys[1]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


def build(impl: str, tag: str, args: argparse.Namespace):
    """(model to train, optimizer) for one run; engine names carry `tag`, so no run inherits another's
    error-feedback residuals."""
    import neptune_rt.torch as nrt
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = make_model()
    if impl.startswith("ddp_"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
        # PowerSGD on gloo worked only with a single DDP bucket here (several buckets failed); the others keep 25 MB.
        ddp = DDP(model, bucket_cap_mb=64 if impl == "ddp_powersgd" else 25)
        if impl == "ddp_fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif impl == "ddp_powersgd":
            state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=2,
                                                start_powerSGD_iter=2, min_compression_rate=1, use_error_feedback=True,
                                                warm_start=True, random_seed=0)
            ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return ddp, torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)
    codec = impl.rsplit("_", 1)[1]
    if impl.startswith(("nrt_hook_", "nrt_mhook_")):
        ddp = DDP(model, bucket_cap_mb=25)
        momentum = args.momentum if impl.startswith("nrt_mhook_") else 0.0
        state = nrt.comm_hook.CommHookState(model, codec=codec, adaptive=codec == "auto", prefix=tag,
                                            momentum=momentum)
        ddp.register_comm_hook(state, nrt.comm_hook.hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=args.momentum)
        state.check_optimizer(opt)
        return ddp, opt
    compression = (nrt.Compression.none if codec == "none" else
                   nrt.Compression.auto if codec == "auto" else nrt.Compression.forced(codec))
    opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum),
                                   named_parameters=[(f"{tag}.{n}", p) for n, p in model.named_parameters()],
                                   compression=compression)
    return model, opt


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rank: int, size: int, tag: str,
             train_s: float) -> tuple[float, float]:
    """(test accuracy in %, the slowest rank's training seconds): both the same on every rank, so every rank
    takes the same decision to stop."""
    import neptune_rt.torch as nrt
    part = slice(rank * len(x) // size, (rank + 1) * len(x) // size)
    with torch.no_grad():
        correct = float((model(x[part]).argmax(1) == y[part]).sum())
    total = nrt.allreduce(torch.tensor([correct, 0.0], dtype=torch.float64), name=f"{tag}.eval", op=nrt.Sum)
    slowest = nrt.allreduce(torch.tensor([train_s], dtype=torch.float64), name=f"{tag}.clock", op=nrt.Max)
    return float(total[0]) / len(x) * 100, float(slowest[0])


def race_one(impl: str, tag: str, data, args: argparse.Namespace, rank: int, size: int) -> dict:
    import neptune_rt.torch as nrt
    x_train, y_train, x_test, y_test = data
    model, opt = build(impl, tag, args)
    local = args.batch // size
    curve, step_times = [], []
    train_s, steps, reached = 0.0, 0, None
    acc = 0.0
    nrt.barrier(name=f"{tag}.start")
    from neptune_rt import engine
    codecs_before = dict(engine.stats()["codecs"])
    for epoch in range(args.max_epochs):
        perm = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(epoch))
        for start in range(0, len(perm) - args.batch + 1, args.batch):
            idx = perm[start + rank * local: start + (rank + 1) * local]
            t0 = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
            dt = time.perf_counter() - t0
            train_s += dt
            step_times.append(dt)
            steps += 1
            if steps % args.eval_every == 0:
                acc, clock = evaluate(model, x_test, y_test, rank, size, tag, train_s)
                curve.append([round(clock, 3), round(acc, 2)])
                if reached is None and acc >= args.target:
                    reached = (clock, steps)
                    break
                if clock > args.max_seconds:
                    break
        else:
            continue
        break
    if hasattr(opt, "remove_hooks"):
        opt.remove_hooks()
    # The codecs neptune_rt's engine used for this run's buckets (auto: the cost model's choice), rank 0's count.
    codecs = {c: n - codecs_before.get(c, 0) for c, n in engine.stats()["codecs"].items()
              if n > codecs_before.get(c, 0)}
    return {"impl": impl, "time_to_target_s": round(reached[0], 3) if reached else None, "codecs": codecs,
            "steps_to_target": reached[1] if reached else None, "final_acc": round(acc, 2), "steps": steps,
            "train_s": round(train_s, 3), "step_ms": round(1000 * statistics.median(step_times), 2),
            "curve": curve}


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        runs = [r for r in rows if r["impl"] == impl]
        times = [r["time_to_target_s"] for r in runs if r["time_to_target_s"] is not None]
        out.append({"summary": True, "impl": impl, "link": runs[0].get("link"), "runs": len(runs),
                    "reached": len(times), "time_to_target_s": statistics.median(times) if times else None,
                    "time_min": min(times) if times else None, "time_max": max(times) if times else None,
                    "steps_to_target": statistics.median([r["steps_to_target"] for r in runs
                                                          if r["steps_to_target"] is not None] or [0]) or None,
                    "step_ms": statistics.median(r["step_ms"] for r in runs),
                    "final_acc": statistics.median(r["final_acc"] for r in runs)})
    return out


def plot(paths: list[str]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("race.py --plot needs matplotlib (pip install matplotlib; see README)")
    for path in paths:
        rows = [r for r in json.load(open(path)) if not r.get("summary")]
        fig, ax = plt.subplots(figsize=(8, 5))
        impls = list(dict.fromkeys(r["impl"] for r in rows))
        for impl in impls:
            for i, r in enumerate(r for r in rows if r["impl"] == impl):
                xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
                ax.plot(xs, ys, label=impl if i == 0 else None, color=f"C{impls.index(impl) % 10}",
                        alpha=0.8, linewidth=1.2)
        ax.axhline(rows[0].get("target", 85.0), color="grey", linestyle=":")
        ax.set_xlabel("training seconds (evaluation excluded)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(60, 92)
        ax.set_title(f"Fashion-MNIST MLP, 4 nodes, link {rows[0].get('link')}")
        ax.legend(fontsize=8)
        out = str(Path(path).with_suffix(".png"))
        fig.savefig(out, dpi=110, bbox_inches="tight")
        print(f"# wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default=",".join(ALL_IMPLS), help=f"comma list from {', '.join(ALL_IMPLS)}")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--target", type=float, default=85.0)
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--max-epochs", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=120.0, help="give up after this much training time")
    ap.add_argument("--link", default="unknown", help="label stored in every row (e.g. 1gbit, 100mbit, none)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", nargs="+", default=None, help="only plot these JSON files")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot)
        return
    impls = args.impls.split(",")
    unknown = [i for i in impls if i not in ALL_IMPLS]
    if unknown:
        raise SystemExit(f"race.py: unknown impls {unknown}; choose from {', '.join(ALL_IMPLS)}")
    sys.path.insert(0, str(Path(__file__).parent))
    from common import init_nrt_and_gloo, write_json
    import neptune_rt.torch as nrt
    rank, size = init_nrt_and_gloo()
    data = load_data()
    rows = []
    for repeat in range(args.repeats):
        order = impls[repeat % len(impls):] + impls[:repeat % len(impls)]
        for impl in order:
            row = race_one(impl, f"race.{impl}.{repeat}", data, args, rank, size)
            row.update(link=args.link, repeat=repeat, np=size, target=args.target)
            rows.append(row)
            if rank == 0:
                print(f"{impl:>16} repeat {repeat}: to {args.target}% in {row['time_to_target_s']} s "
                      f"({row['steps_to_target']} steps, step {row['step_ms']} ms), acc {row['final_acc']}",
                      flush=True)
    if rank == 0:
        summary = summarize(rows)
        print(f"\n{'impl':>16} {'runs':>4} {'t85 median (s)':>14} {'min-max':>13} {'steps':>6} {'step ms':>8} "
              f"{'acc':>6}")
        for s in summary:
            t = s["time_to_target_s"]
            print(f"{s['impl']:>16} {s['runs']:>4} {t if t is not None else '-':>14} "
                  f"{(str(s['time_min']) + '-' + str(s['time_max'])) if t is not None else '-':>13} "
                  f"{s['steps_to_target'] or '-':>6} {s['step_ms']:>8} {s['final_acc']:>6}")
        if args.json:
            write_json(args.json, rows + summary)
    dist.barrier()
    dist.destroy_process_group()
    nrt.shutdown()


if __name__ == "__main__":
    main()
