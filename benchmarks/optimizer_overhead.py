#!/usr/bin/env python3
"""Training-path overhead with many parameters, run under mpirun: a step over ResNet-50's 161 parameter shapes
(channels divided by --divisor) through DistributedOptimizer and through torch DDP driving neptune_rt's hook, both
with the int8 codec (one engine tensor per parameter, submitted as one group per bucket), against torch DDP's
own all-reduce (gloo) and a step without communication, trials interleaved (benchmarks/common.py).

    mpirun -np 2 --bind-to core .venv/bin/python benchmarks/optimizer_overhead.py --json out.json

The model's loss is x * sum(p.sum()) over the parameters, so backward is nearly free and produces a gradient for
every parameter (what fires the per-parameter hooks); the step's time is then the paths' own cost (hooks,
submission, completion, waits) plus the collectives. Rows: `step_us` (median over trials of the slowest rank's
step), `over_compute_us` and `over_compute_us_per_100_tensors` (the step minus the compute-only step).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

import neptune_rt.torch as nrt

sys.path.insert(0, str(Path(__file__).parent))
from common import init_nrt_and_gloo, timed_interleaved, write_json  # noqa: E402
from engine_overhead import resnet50_shapes  # noqa: E402

IMPLS = ("compute", "ddp_allreduce", "hook_int8", "opt_int8")


class ShapesModel(nn.Module):
    """Parameters of the given shapes; forward(x) = x * sum of every parameter's sum (a gradient for each)."""

    def __init__(self, shapes: list[tuple[int, ...]]):
        super().__init__()
        torch.manual_seed(0)
        self.ps = nn.ParameterList(nn.Parameter(torch.randn(s) * 0.01) for s in shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.stack([p.sum() for p in self.ps]).sum()


def build(impl: str, shapes: list[tuple[int, ...]]):
    from torch.nn.parallel import DistributedDataParallel as DDP
    model = ShapesModel(shapes)
    sgd = lambda params: torch.optim.SGD(params, lr=1e-6)  # noqa: E731  (no momentum: no local-momentum work)
    if impl == "compute":
        return model, sgd(model.parameters())
    if impl in ("ddp_allreduce", "hook_int8"):
        ddp = DDP(model, bucket_cap_mb=25)
        if impl == "hook_int8":
            state = nrt.comm_hook.CommHookState(model, codec="int8", adaptive=False, prefix="ovh.hook")
            ddp.register_comm_hook(state, nrt.comm_hook.hook)
        return ddp, sgd(ddp.parameters())
    opt = nrt.DistributedOptimizer(sgd(model.parameters()), compression=nrt.Compression.forced("int8"),
                                   named_parameters=[(f"ovh.opt.{n}", p) for n, p in model.named_parameters()])
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--divisor", type=int, default=8, help="ResNet-50 channels are divided by this")
    ap.add_argument("--trials", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20, help="steps per trial")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rank, n = init_nrt_and_gloo()
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    shapes = resnet50_shapes(args.divisor)[:161]  # the parameters (the rest are BatchNorm buffers)
    impls = args.impls.split(",")
    built = {impl: build(impl, shapes) for impl in impls}
    gen = torch.Generator().manual_seed(rank)

    def step(impl: str):
        model, opt = built[impl]

        def run() -> None:
            opt.zero_grad()
            model(torch.rand((), generator=gen)).backward()
            opt.step()
        return run

    times = timed_interleaved(world, {impl: step(impl) for impl in impls}, args.trials, args.steps, warmup=2)
    med = {impl: statistics.median(v) * 1e6 for impl, v in times.items()}
    rows = []
    for impl in impls:
        row = {"impl": impl, "np": n, "tensors": len(shapes),
               "params": sum(p.numel() for p in built[impl][0].parameters()),
               "step_us": med[impl], "step_us_min": min(times[impl]) * 1e6, "step_us_max": max(times[impl]) * 1e6,
               "trials": args.trials, "steps_per_trial": args.steps, "loadavg_1min": os.getloadavg()[0]}
        if "compute" in med and impl != "compute":
            row["over_compute_us"] = med[impl] - med["compute"]
            row["over_compute_us_per_100_tensors"] = row["over_compute_us"] * 100 / len(shapes)
        rows.append(row)
    if rank == 0:
        print(f"# {n} ranks, {len(shapes)} parameters, {rows[0]['params'] * 4 / 1e6:.1f} MB, "
              f"load average {os.getloadavg()[0]:.2f}")
        for row in rows:
            extra = ""
            if "over_compute_us" in row:
                extra = (f"  +{row['over_compute_us']:.0f} us over compute = "
                         f"{row['over_compute_us_per_100_tensors']:.0f} us per 100 tensors")
            print(f"{row['impl']:>14} {row['step_us']:9.0f} us (min {row['step_us_min']:.0f}, max "
                  f"{row['step_us_max']:.0f}){extra}")
        if args.json:
            write_json(args.json, rows)
    dist.barrier()
    dist.destroy_process_group()
    nrt.shutdown()


if __name__ == "__main__":
    main()
