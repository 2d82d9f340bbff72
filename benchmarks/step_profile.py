#!/usr/bin/env python3
"""Per-step profile of one data-parallel training step: torch DDP + fp16 hook (gloo), torch DDP driving
neptune_rt's hook, and neptune_rt's DistributedOptimizer, on the Fashion-MNIST MLP 784-1024-1024-10 (global
batch 256) or a deeper MLP, interleaved trials, median step time, plus a compute-only step (no communication).
Run under mpirun (4 ranks), on shared memory or inside the emulated cluster:

    mpirun -np 4 --oversubscribe python benchmarks/step_profile.py --profile --json out.json
    python benchmarks/cluster.py --nodes 4 --rate 1gbit -- .venv/bin/python benchmarks/step_profile.py \\
        --profile --link 1gbit --link-gbps 1 --json benchmarks/results/step_profile_1gbit.json

Per step and rank it records (time.monotonic, the engine's clock): forward, backward (the call), optimizer step
(the call: for DistributedOptimizer the wait for the reduced gradients), Python hook time (the DDP comm hook,
or DistributedOptimizer's per-parameter hooks: gradient into its bucket and the submission), the time from
backward start to the first and the last bucket submitted, and the engine's own timers (stats() deltas:
negotiation, encode, wire, decode, callers' waits; buckets and wire bytes; bucket_records() for the first
bucket's start in the engine). The engine does not time its cost-model decision apart: it sits in encode.
A step is as slow as its slowest rank; components are means over ranks; the table gives medians over all
timed steps (min-max: of the per-trial medians). `exposed` = step - compute-only step; `napkin` = compute +
wire bytes per rank / link rate (only with --link-gbps). One JSON row per impl (`impl`, `link`, `np`,
`model`, `step_ms`, `step_ms_min`, `step_ms_max`, `*_ms` components, `wire_bytes`, `buckets`, ...).
The Python timers wrap the hook functions from outside (see `instrument`): nothing in the package changes.
"""
from __future__ import annotations

import argparse
import functools
import gzip
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import neptune_rt.torch as nrt
from neptune_rt import engine as _engine
from neptune_rt.torch import grad_buckets, optimizer as _optimizer

sys.path.insert(0, str(Path(__file__).parent))
from common import init_nrt_and_gloo, write_json  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")
CODECS = ("int8", "int4", "onebit")
IMPLS = ("compute", "ddp_fp16") + tuple(f"hook_{c}" for c in CODECS) + tuple(f"opt_{c}" for c in CODECS)
ENGINE_KEYS = ("negotiate_s", "encode_s", "wire_s", "decode_s", "wait_s")


class Timers:
    """Python-side timers of the current step (one set per rank)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hook_s = 0.0
        self.submits: list[float] = []

    def wrap(self, fn, submits: bool):
        @functools.wraps(fn)  # DDP checks a comm hook's signature (inspect follows __wrapped__)
        def timed(*args, **kwargs):
            t0 = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                t1 = time.monotonic()
                self.hook_s += t1 - t0
                if submits:
                    self.submits.append(t0)
        return timed


TIMERS = Timers()


def instrument() -> None:
    """DistributedOptimizer: a parameter's hook spends its time in GradBucket.take_grad (gradient into the
    bucket) and, for the bucket's last parameter, in _transform_and_submit."""
    grad_buckets.GradBucket.take_grad = TIMERS.wrap(grad_buckets.GradBucket.take_grad, submits=False)
    _optimizer.DistributedOptimizer._transform_and_submit = TIMERS.wrap(
        _optimizer.DistributedOptimizer._transform_and_submit, submits=True)


def load_batches(rank: int, size: int, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` local batches of Fashion-MNIST (or of random data of the same shape, when it is missing)."""
    local = batch // size
    g = torch.Generator().manual_seed(rank)
    if DATA.exists():
        with gzip.open(DATA / "train-images-idx3-ubyte.gz", "rb") as f:
            x = torch.tensor(np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784), dtype=torch.float32)
        with gzip.open(DATA / "train-labels-idx1-ubyte.gz", "rb") as f:
            y = torch.tensor(np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64))
        x = (x / 255.0 - 0.286) / 0.353
        idx = [torch.randint(0, len(x), (local,), generator=g) for _ in range(count)]
        return [(x[i], y[i]) for i in idx]
    return [(torch.randn(local, 784, generator=g), torch.randint(0, 10, (local,), generator=g))
            for _ in range(count)]


def make_model(depth: int) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(784, 1024), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(1024, 10))


def build(impl: str, args: argparse.Namespace):
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = make_model(args.depth)
    sgd = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731
    if impl == "compute":
        return model, sgd(model.parameters())
    if impl == "ddp_fp16" or impl.startswith("hook_"):
        ddp = DDP(model, bucket_cap_mb=25)
        if impl == "ddp_fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            ddp.register_comm_hook(None, TIMERS.wrap(default_hooks.fp16_compress_hook, submits=True))
        else:
            state = nrt.comm_hook.CommHookState(model, codec=impl[5:], adaptive=False, prefix=f"prof.{impl}")
            ddp.register_comm_hook(state, TIMERS.wrap(nrt.comm_hook.hook, submits=True))
        return ddp, sgd(ddp.parameters())
    bucket_mb, first_mb = args.bucket_mb, args.first_bucket_mb
    codec, _, sizes = impl[4:].partition(":")
    if sizes:  # opt_int8:BUCKET/FIRST, in MiB; FIRST "-" means no small first bucket
        b, f = sizes.split("/")
        bucket_mb, first_mb = float(b), (None if f == "-" else float(f))
    kwargs = {} if bucket_mb is None else {"bucket_bytes": int(bucket_mb * 2**20)}
    if first_mb is not None or sizes:
        kwargs["first_bucket_bytes"] = None if first_mb is None else int(first_mb * 2**20)
    opt = nrt.DistributedOptimizer(sgd(model.parameters()), compression=nrt.Compression.forced(codec),
                                   named_parameters=[(f"prof.{impl}.{n}", p) for n, p in model.named_parameters()],
                                   **kwargs)
    return model, opt


def engine_snapshot() -> dict:
    s = _engine.stats()
    return {k: s[k] for k in ENGINE_KEYS + ("buckets", "bytes_wire")}


def one_step(model, opt, x, y) -> dict:
    TIMERS.reset()
    _engine.bucket_records(clear=True)
    before = engine_snapshot()
    t0 = time.monotonic()
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    t1 = time.monotonic()
    loss.backward()
    t2 = time.monotonic()
    opt.step()
    t3 = time.monotonic()
    after = engine_snapshot()
    records = _engine.bucket_records(clear=True)
    row = {"step_s": t3 - t0, "forward_s": t1 - t0, "backward_s": t2 - t1, "opt_step_s": t3 - t2,
           "py_hook_s": TIMERS.hook_s,
           "first_submit_s": (min(TIMERS.submits) - t1) if TIMERS.submits else None,
           "last_submit_s": (max(TIMERS.submits) - t1) if TIMERS.submits else None,
           "first_bucket_start_s": (min(r["start"] for r in records) - t1) if records else None}
    for k in ENGINE_KEYS + ("buckets", "bytes_wire"):
        row[k] = after[k] - before[k]
    return row


def aggregate(per_step: list[list[dict]]) -> dict:
    """per_step[i] = the rows of every rank for step i: the step's time is its slowest rank's, the rest means."""
    out: dict = {}
    keys = per_step[0][0].keys()
    for k in keys:
        vals = []
        for ranks in per_step:
            xs = [r[k] for r in ranks if r[k] is not None]
            if xs:
                vals.append(max(xs) if k == "step_s" else sum(xs) / len(xs))
        out[k] = statistics.median(vals) if vals else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--impls", default=",".join(IMPLS),
                    help=f"comma list from {', '.join(IMPLS)}; opt_* may end in :BUCKET_MB/FIRST_MB (FIRST '-': none)")
    ap.add_argument("--depth", type=int, default=2, help="hidden 1024-wide layers (2: the Fashion-MNIST MLP)")
    ap.add_argument("--batch", type=int, default=256, help="global batch")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per trial")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed trials first")
    ap.add_argument("--bucket-mb", type=float, default=None, help="DistributedOptimizer bucket_bytes (MiB)")
    ap.add_argument("--first-bucket-mb", type=float, default=None,
                    help="DistributedOptimizer first_bucket_bytes (MiB)")
    ap.add_argument("--link", default="shm", help="label stored in every row")
    ap.add_argument("--link-gbps", type=float, default=None, help="per-node link rate, for the napkin limit")
    ap.add_argument("--profile", action="store_true", help="print the per-step breakdown, not just step times")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    impls = args.impls.split(",")
    unknown = [i for i in impls if i.split(":")[0] not in IMPLS or (":" in i and not i.startswith("opt_"))]
    if unknown:
        raise SystemExit(f"step_profile.py: unknown impls {unknown}; choose from {', '.join(IMPLS)}")

    rank, size = init_nrt_and_gloo()
    instrument()
    batches = load_batches(rank, size, args.batch, args.steps)
    built = {impl: build(impl, args) for impl in impls}
    steps: dict[str, list[list[dict]]] = {impl: [] for impl in impls}
    trial_medians: dict[str, list[float]] = {impl: [] for impl in impls}
    for trial in range(args.warmup + args.trials):
        order = impls[trial % len(impls):] + impls[:trial % len(impls)]
        for impl in order:  # interleaved, the order rotated each trial
            model, opt = built[impl]
            dist.barrier()
            mine = [one_step(model, opt, x, y) for x, y in batches]
            everyone: list = [None] * size
            dist.all_gather_object(everyone, mine)  # gloo: the engine's counters see none of this
            if trial >= args.warmup:
                per_step = [[everyone[r][i] for r in range(size)] for i in range(len(batches))]
                steps[impl].extend(per_step)
                trial_medians[impl].append(statistics.median(max(r["step_s"] for r in s) for s in per_step))

    if rank == 0:
        params = sum(p.numel() for p in make_model(args.depth).parameters())
        rows = []
        compute = aggregate(steps["compute"])["step_s"] if "compute" in steps else None
        for impl in impls:
            a = aggregate(steps[impl])
            ms = {k.removesuffix("_s") + "_ms": (None if v is None else round(v * 1e3, 3))
                  for k, v in a.items() if k.endswith("_s")}
            wire = a["bytes_wire"] or 0
            if impl == "ddp_fp16":  # gloo's ring: 2(n-1)/n of the fp16 bytes
                wire = 2 * (size - 1) / size * params * 2
            napkin = None
            if args.link_gbps and compute is not None:
                napkin = compute + wire * 8 / (args.link_gbps * 1e9)
            rows.append({"impl": impl, "link": args.link, "np": size, "model": f"mlp784-{'1024-' * args.depth}10",
                         "params": params, "global_batch": args.batch, "trials": args.trials,
                         "steps_per_trial": args.steps, **ms,
                         "step_ms_min": round(min(trial_medians[impl]) * 1e3, 3),
                         "step_ms_max": round(max(trial_medians[impl]) * 1e3, 3),
                         "buckets": a["buckets"], "wire_bytes": int(wire),
                         "exposed_ms": None if compute is None else round((a["step_s"] - compute) * 1e3, 3),
                         "napkin_ms": None if napkin is None else round(napkin * 1e3, 3),
                         "vs_napkin": None if napkin is None else round(a["step_s"] / napkin, 3),
                         "bucket_mb": args.bucket_mb, "first_bucket_mb": args.first_bucket_mb})
        print_rows(rows, args, size, params)
        write_json(args.json, rows)
    dist.barrier()
    dist.destroy_process_group()
    nrt.shutdown()


def print_rows(rows: list[dict], args: argparse.Namespace, size: int, params: int) -> None:
    print(f"# {size} ranks, MLP depth {args.depth} ({params / 1e6:.2f}M params), global batch {args.batch}, "
          f"link {args.link}, median of {args.trials} trials x {args.steps} steps (ms)")
    cols = [("impl", "impl", ""), ("step", "step_ms", ".1f"), ("min-max", None, ""),
            ("exposed", "exposed_ms", ".1f"), ("napkin", "napkin_ms", ".1f"), ("x napkin", "vs_napkin", ".2f")]
    if args.profile:
        cols += [("fwd", "forward_ms", ".1f"), ("bwd", "backward_ms", ".1f"), ("opt.step", "opt_step_ms", ".1f"),
                 ("py hook", "py_hook_ms", ".2f"), ("1st submit", "first_submit_ms", ".1f"),
                 ("last submit", "last_submit_ms", ".1f"), ("1st bucket", "first_bucket_start_ms", ".1f"),
                 ("negotiate", "negotiate_ms", ".2f"), ("encode", "encode_ms", ".2f"), ("wire", "wire_ms", ".1f"),
                 ("decode", "decode_ms", ".2f"), ("eng wait", "wait_ms", ".1f"), ("buckets", "buckets", ".0f"),
                 ("wire KB", None, "")]
    width = [16] + [11] * (len(cols) - 1)
    print("  ".join(f"{h:>{w}}" for (h, _, _), w in zip(cols, width)))
    for r in rows:
        cells = []
        for (h, k, spec), w in zip(cols, width):
            if h == "min-max":
                v = f"{r['step_ms_min']:.1f}-{r['step_ms_max']:.1f}"
            elif h == "wire KB":
                v = f"{r['wire_bytes'] / 1024:.0f}"
            else:
                x = r.get(k)
                v = "-" if x is None else (x if spec == "" else format(x, spec))
            cells.append(f"{v:>{w}}")
        print("  ".join(cells))


if __name__ == "__main__":
    main()
