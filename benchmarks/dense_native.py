"""Dense all-reduce of one buffer four ways, interleaved under mpirun: our decision function's choice (recursive
doubling, halving-doubling or the ring) and our ring, on the calling thread (neptune_rt's Communicator),
MPI_Allreduce, and MPI_Iallreduce polled with MPI_Test (what the engine runs for dense buckets up to
kNativeAllreduceMaxBytes, csrc/engine/engine.h). The evidence behind that threshold:

    mpirun -np 4 --oversubscribe --bind-to none python benchmarks/dense_native.py --json out.json
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import parse_size, print_table, summarize, timed_interleaved, write_json  # noqa: E402

from neptune_rt import _C  # noqa: E402

WORLD = MPI.COMM_WORLD


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256K,1M,2528320,4M,8M")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    direct = _C.Communicator(WORLD)
    n = WORLD.Get_size()
    rows = []
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        buf = np.zeros(size // 4, np.float32)

        def iallreduce() -> None:
            req = WORLD.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            while not req.Test():
                pass
        cases = {"neptune_rt_direct": lambda: _C.allreduce_inplace(direct, buf, "float32", "sum", "auto", 0, 300.0),
                 "neptune_rt_ring": lambda: _C.allreduce_inplace(direct, buf, "float32", "sum", "ring", 0, 300.0),
                 "mpi": lambda: WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM),
                 "mpi_iallreduce": iallreduce}
        times = timed_interleaved(WORLD, cases, args.trials, args.reps)
        for impl, samples in times.items():
            med, lo, hi = summarize(samples)
            algorithm = _C.choose_allreduce_algorithm(size, n) if impl == "neptune_rt_direct" else None
            rows.append({"impl": impl, "np": n, "algorithm": algorithm,
                         "size_bytes": size, "count": size // 4, "dtype": "float32",
                         "op": "sum", "codec": "none", "time_us": med * 1e6, "time_us_min": lo * 1e6,
                         "time_us_max": hi * 1e6, "algbw_gbps": size / med / 1e9,
                         "busbw_gbps": size / med / 1e9 * 2 * (n - 1) / n, "link": "shm",
                         "loadavg_1min": os.getloadavg()[0]})
    if WORLD.Get_rank() == 0:
        print_table(rows, [("impl", "impl", ""), ("size(B)", "size_bytes", "d"), ("time(us)", "time_us", ".1f"),
                           ("min", "time_us_min", ".1f"), ("max", "time_us_max", ".1f"),
                           ("busbw", "busbw_gbps", ".3f")])
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
