"""In-place buckets, run under mpirun: a grouped all-reduce of the same members as views of one flat array (the
engine works on them where they lie) and as separate arrays (it packs them into its fusion or fp32 work buffer and
unpacks after), interleaved, dense and with a forced codec. The members are the parameters of the Fashion-MNIST
MLP of benchmarks/race.py and step_profile.py (784-1024-1024-10: 7.5 MB of fp32) or, with --resnet, the 200
ResNet-50-shaped tensors of engine_overhead.py.

    mpirun -np 4 --oversubscribe --bind-to none .venv/bin/python benchmarks/inplace_buckets.py --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TIMING_COLUMNS, print_table, timed_interleaved, timing_fields, write_json  # noqa: E402
from engine_overhead import resnet50_shapes  # noqa: E402

import neptune_rt as nrt  # noqa: E402

WORLD = MPI.COMM_WORLD
MLP_SHAPES = [(1024, 784), (1024,), (1024, 1024), (1024,), (10, 1024), (10,)]  # 7.5 MB of fp32


def grouped(members: list[np.ndarray], label: str, codec: str):
    names = [f"{label}.{i}" for i in range(len(members))]
    return lambda: nrt.grouped_allreduce_async_(members, names, codec=codec, adaptive=False,
                                                postscale=1.0 / nrt.size()).wait()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="none,int8")
    p.add_argument("--resnet", action="store_true", help="the 200 ResNet-50-shaped tensors instead of the MLP's")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    shapes = resnet50_shapes(8) if args.resnet else MLP_SHAPES
    sizes = [int(np.prod(s)) for s in shapes]
    rng = np.random.default_rng(r)
    flat = rng.standard_normal(sum(sizes)).astype(np.float32)
    views = [v.reshape(s) for v, s in zip(np.split(flat, np.cumsum(sizes)[:-1]), shapes)]
    separate = [v.copy() for v in views]
    cases = {}
    for codec in args.codecs.split(","):
        cases[f"{codec}.views"] = grouped(views, f"{codec}.views", codec)
        cases[f"{codec}.separate"] = grouped(separate, f"{codec}.separate", codec)
    times = timed_interleaved(WORLD, cases, args.trials, args.reps)
    rows = []
    for case, samples in times.items():
        codec, layout = case.split(".")
        rows.append({"impl": f"grouped_{layout}", "codec": codec, "np": n, "tensors": len(shapes),
                     "size_bytes": flat.nbytes, **timing_fields(samples), "packed": layout == "separate", "link": "shm",
                     "loadavg_1min": os.getloadavg()[0]})
    if r == 0:
        print_table(rows, [("codec", "codec", ""), ("impl", "impl", ""), ("size(B)", "size_bytes", "d"),
                           *TIMING_COLUMNS])
        by = {(x["codec"], x["impl"]): x["time_us"] for x in rows}
        for codec in args.codecs.split(","):
            print(f"{codec}: separate / views = {by[(codec, 'grouped_separate')] / by[(codec, 'grouped_views')]:.2f}x")
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
