"""Where a small all-reduce's time goes when ranks share cores, under mpirun: the engine's `allreduce_` against
MPI_Allreduce, MPI_Allreduce after a busy loop of W microseconds per call (each rank's own CPU work per
operation, as the engine's Python, binding and cycle are), and MPI_Iallreduce polled with MPI_Test without
yielding (the non-blocking collective a bounded wait has to use). All interleaved (benchmarks/common.py). On 4
ranks over 2 cores it shows what limits the engine's small-message latency there: each microsecond of per-rank
work costs the slowest rank several, because a rank's work keeps a peer that shares its core off the CPU.

    mpirun -np 4 --oversubscribe --bind-to none .venv/bin/python benchmarks/latency_floor.py --json F
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TIMING_COLUMNS, parse_size, print_table, timed_interleaved, timing_fields, write_json  # noqa: E402

import neptune_rt as nrt  # noqa: E402

WORLD = MPI.COMM_WORLD


def busy(microseconds: float) -> None:
    end = time.perf_counter() + microseconds * 1e-6
    while time.perf_counter() < end:
        pass


def polled(request: MPI.Request) -> None:
    while not request.Test():
        pass


def cases_for(buf: np.ndarray, work_us: list[float]) -> dict:
    cases = {"neptune_rt": lambda: nrt.allreduce_(buf, name=f"floor.{buf.nbytes}"),
             "mpi_iallreduce_polled": lambda: polled(WORLD.Iallreduce(MPI.IN_PLACE, buf))}
    for w in work_us:
        cases[f"mpi+work{w:g}us"] = (lambda w=w: (busy(w), WORLD.Allreduce(MPI.IN_PLACE, buf)))
    return cases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4,4K", help="message sizes in bytes (float32)")
    p.add_argument("--work-us", default="0,2,5,10", help="busy microseconds before each MPI_Allreduce")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--reps", type=int, default=1000)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    nrt.init()
    work_us = [float(w) for w in args.work_us.split(",")]
    rows = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        buf = np.zeros(max(size // 4, 1), np.float32)  # sums of zeros stay finite however many calls run
        times = timed_interleaved(WORLD, cases_for(buf, work_us), args.trials, args.reps)
        for impl, samples in times.items():
            rows.append({"impl": impl, "case": "latency_floor", "np": nrt.size(), "size_bytes": buf.nbytes,
                         **timing_fields(samples), "link": "shm", "cores": os.cpu_count(),
                         "loadavg_1min": os.getloadavg()[0]})
    if nrt.rank() == 0:
        print_table(rows, [("bytes", "size_bytes", "d"), ("impl", "impl", ""), *TIMING_COLUMNS])
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
