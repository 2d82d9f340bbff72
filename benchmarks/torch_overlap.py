"""Training-step benchmark, run under mpirun: neptune_rt's DistributedOptimizer (gradients handed to the engine
by per-parameter hooks while backward runs) vs torch DDP over gloo, on the same ~25M-parameter MLP and data, in
the same run, with interleaved trials; plus a compute-only step (no communication), from which the exposed
communication time of each is step time minus compute-only step time.

    mpirun -np 4 --oversubscribe python benchmarks/torch_overlap.py --json torch_overlap.json

Prints a table (median over trials, min-max spread) and writes `--json PATH`: one flat object per impl with
`impl`, `np`, `params`, `batch_per_rank`, `step_ms` (+ `_min`/`_max`), `samples_per_s`, `exposed_comm_ms`,
`speedup_vs_ddp_gloo`.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

import neptune_rt.torch as nrt


def mlp(width: int, depth: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, classes))


def init_gloo(rank: int, size: int) -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        # Rank 0 picks a free port and tells the others through the engine.
        port = torch.tensor([0], dtype=torch.int64)
        if rank == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port[0] = s.getsockname()[1]
        os.environ["MASTER_PORT"] = str(int(nrt.broadcast(port, 0, name="bench.port").item()))
    dist.init_process_group("gloo", rank=rank, world_size=size)


def make_step(impl: str, width: int, depth: int, lr: float, buckets_mb: float,
              nrt_bucket_mb: float) -> Callable[[torch.Tensor, torch.Tensor], None]:
    model = mlp(width, depth)
    if impl in ("neptune_rt", "neptune_rt_fp16"):
        compression = nrt.Compression.fp16 if impl.endswith("fp16") else nrt.Compression.none
        opt = nrt.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=lr),
                                       named_parameters=model.named_parameters(), compression=compression,
                                       bucket_bytes=int(nrt_bucket_mb * 2**20))
    elif impl in ("ddp_gloo", "ddp_gloo_fp16"):
        model = DDP(model, bucket_cap_mb=buckets_mb)
        if impl == "ddp_gloo_fp16":
            from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif impl == "compute_only":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    else:
        raise ValueError(f"unknown impl {impl!r}")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=2048)
    ap.add_argument("--depth", type=int, default=6, help="hidden Linear(width, width) layers")
    ap.add_argument("--batch", type=int, default=16, help="samples per rank per step")
    ap.add_argument("--steps", type=int, default=4, help="steps per trial")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="untimed trials per impl first")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    ap.add_argument("--ddp-bucket-mb", type=float, default=25.0, help="DDP's bucket_cap_mb")
    ap.add_argument("--nrt-bucket-mb", type=float, default=25.0, help="DistributedOptimizer's bucket_bytes in MiB")
    ap.add_argument("--impls", default="neptune_rt,ddp_gloo,compute_only",
                    help="comma list of neptune_rt, neptune_rt_fp16, ddp_gloo, ddp_gloo_fp16, compute_only")
    ap.add_argument("--json", help="write the rows here (rank 0)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    nrt.init()
    rank, size = nrt.rank(), nrt.size()
    init_gloo(rank, size)
    impls = args.impls.split(",")
    steps = {impl: make_step(impl, args.width, args.depth, 1e-3, args.ddp_bucket_mb, args.nrt_bucket_mb)
             for impl in impls}
    params = sum(p.numel() for p in mlp(args.width, args.depth).parameters())
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, args.width, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)

    times: dict[str, list[float]] = {impl: [] for impl in impls}
    for trial in range(args.warmup + args.trials):
        for impl in impls:  # interleaved: A B C A B C ...
            dist.barrier()
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[impl](x, y)
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # a step is as slow as its slowest rank
            if trial >= args.warmup:
                times[impl].append(elapsed.item() / args.steps)

    if rank == 0:
        rows = []
        compute = statistics.median(times["compute_only"]) if "compute_only" in times else None
        ddp = statistics.median(times["ddp_gloo"]) if "ddp_gloo" in times else None
        for impl in impls:
            t = statistics.median(times[impl])
            rows.append({
                "impl": impl, "np": size, "params": params, "batch_per_rank": args.batch,
                "threads_per_rank": args.threads, "ddp_bucket_mb": args.ddp_bucket_mb,
                "nrt_bucket_mb": args.nrt_bucket_mb, "trials": args.trials, "steps_per_trial": args.steps,
                "step_ms": t * 1e3, "step_ms_min": min(times[impl]) * 1e3, "step_ms_max": max(times[impl]) * 1e3,
                "samples_per_s": args.batch * size / t,
                "exposed_comm_ms": None if compute is None else (t - compute) * 1e3,
                "speedup_vs_ddp_gloo": None if ddp is None else ddp / t,
            })
        print(f"{size} ranks, MLP {args.depth}x{args.width} ({params / 1e6:.1f}M params, "
              f"{params * 4 / 2**20:.0f} MiB fp32 gradients), batch {args.batch}/rank, "
              f"median of {args.trials} trials x {args.steps} steps")
        print(f"{'impl':<18}{'step(ms)':>10}{'min-max(ms)':>18}{'samples/s':>11}{'exposed comm(ms)':>18}"
              f"{'vs ddp_gloo':>13}")
        for r in rows:
            spread = f"{r['step_ms_min']:.0f}-{r['step_ms_max']:.0f}"
            exposed = "-" if r["exposed_comm_ms"] is None else f"{r['exposed_comm_ms']:.0f}"
            ratio = "-" if r["speedup_vs_ddp_gloo"] is None else f"{r['speedup_vs_ddp_gloo']:.2f}x"
            print(f"{r['impl']:<18}{r['step_ms']:>10.0f}{spread:>18}{r['samples_per_s']:>11.1f}{exposed:>18}"
                  f"{ratio:>13}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    dist.barrier()
    dist.destroy_process_group()
    nrt.shutdown()


if __name__ == "__main__":
    main()
