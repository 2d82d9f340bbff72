#!/usr/bin/env python3
"""Link check for an (emulated) cluster: timed MPI Sendrecv between rank pairs and MPI_Allreduce.

    python benchmarks/cluster.py --nodes 2 --rate 1gbit -- python benchmarks/net_probe.py --mb 32
Sendrecv is a ring shift (rank r sends S bytes to r+1 while receiving S from r-1, as each step of a ring
all-reduce does), so S/t is what one node's full-duplex link delivers;
Allreduce reports nccl-tests busbw = S/t * 2(n-1)/n. Rank 0 prints the medians; `--json PATH` writes rows.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from mpi4py import MPI


def timed(fn, trials: int, comm: MPI.Comm) -> list[float]:
    """Seconds per call, slowest rank's view, after one warm-up call."""
    fn()
    times = []
    for _ in range(trials):
        comm.Barrier()
        t0 = time.perf_counter()
        fn()
        times.append(comm.allreduce(time.perf_counter() - t0, op=MPI.MAX))
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mb", type=float, default=32.0, help="message size in MB (default 32)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", default=None, help="write the result rows here (rank 0)")
    args = p.parse_args()
    comm = MPI.COMM_WORLD
    rank, n = comm.rank, comm.size
    size = int(args.mb * 1e6) // 4 * 4
    send = np.ones(size // 4, dtype=np.float32)
    recv = np.empty_like(send)
    rows = []

    if n > 1:
        right, left = (rank + 1) % n, (rank - 1) % n
        t = timed(lambda: comm.Sendrecv(send, dest=right, recvbuf=recv, source=left), args.trials, comm)
        rows.append({"impl": "mpi", "op": "sendrecv", "np": n, "size_bytes": size,
                     "time_us": statistics.median(t) * 1e6, "algbw_gbps": size / statistics.median(t) / 1e9})
    t = timed(lambda: comm.Allreduce(send, recv, op=MPI.SUM), args.trials, comm)
    wrong = int(not np.all(recv == n))
    algbw = size / statistics.median(t) / 1e9
    rows.append({"impl": "mpi", "op": "allreduce", "np": n, "size_bytes": size,
                 "time_us": statistics.median(t) * 1e6, "algbw_gbps": algbw,
                 "busbw_gbps": algbw * 2 * (n - 1) / n, "wrong": wrong})
    if rank == 0:
        hosts = sorted(set(comm.gather(MPI.Get_processor_name(), root=0)))
        print(f"# {n} ranks on {len(hosts)} hosts: {' '.join(hosts)}")
        print(f"{'op':>10} {'size(B)':>12} {'time(us)':>12} {'algbw(GB/s)':>12} {'busbw(GB/s)':>12} #wrong")
        for r in rows:
            print(f"{r['op']:>10} {r['size_bytes']:>12} {r['time_us']:>12.0f} {r['algbw_gbps']:>12.4f} "
                  f"{r.get('busbw_gbps', float('nan')):>12.4f} {r.get('wrong', 0):>6}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
    else:
        comm.gather(MPI.Get_processor_name(), root=0)


if __name__ == "__main__":
    main()
