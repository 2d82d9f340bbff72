"""4 KB all-reduce latency through the engine with its response cache filled, run under mpirun: a training job
keeps one cache slot per parameter name, so every cycle of a large model sees a full cache. Fills the cache with
--fill names (one tiny all-reduce each), then times `allreduce_` of 4 KB (a name cached after them, so in the
highest slot) against MPI_Allreduce, interleaved (benchmarks/common.py), for each fill level.

    mpirun -np 4 --oversubscribe --bind-to none .venv/bin/python benchmarks/latency_cache.py --fill 0,1000 --json F
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TIMING_COLUMNS, print_table, timed_interleaved, timing_fields, write_json  # noqa: E402

import neptune_rt as nrt  # noqa: E402

WORLD = MPI.COMM_WORLD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fill", default="0,1000", help="cached names before timing, one run per value (capacity 1024)")
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    nrt.init()
    buf = np.ones(1024, np.float32)
    rows, filled = [], 0
    for fill in sorted(int(v) for v in args.fill.split(",")):
        for i in range(filled, fill):
            nrt.allreduce_(np.ones(4, np.float32), name=f"fill.{i}")
        filled = fill

        def reset(_label: str) -> None:
            buf[:] = 1
        name = f"lat4k.{fill}"  # cached after the fill: the highest slot, as any tensor's may be in training
        cases = {"neptune_rt": lambda: nrt.allreduce_(buf, name=name),
                 "mpi": lambda: WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)}
        times = timed_interleaved(WORLD, cases, args.trials, args.reps, prepare=reset)
        for impl, samples in times.items():
            rows.append({"impl": impl, "case": "latency_4k", "cached_names": fill, "np": nrt.size(),
                         "size_bytes": buf.nbytes, **timing_fields(samples), "link": "shm",
                         "loadavg_1min": os.getloadavg()[0]})
    if nrt.rank() == 0:
        print_table(rows, [("cached", "cached_names", "d"), ("impl", "impl", ""), *TIMING_COLUMNS])
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
