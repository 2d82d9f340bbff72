"""All-reduce benchmark, run under mpirun: neptune_rt (through the engine, and its collective called
directly) vs MPI_Allreduce of the same MPI (mpi4py) vs torch.distributed gloo, interleaved in one run.

    mpirun -np 4 --oversubscribe python benchmarks/allreduce.py --sizes 4K,64K,1M,16M,64M --json out.json

Columns follow nccl-tests: busbw = algbw * 2(n-1)/n on the uncompressed size; #wrong counts wrong elements
of a verification all-reduce of each implementation at each size.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_size, parse_size, print_table, summarize, timed_interleaved, write_json  # noqa: E402

import neptune_rt as nrt  # noqa: E402
from neptune_rt import _C  # noqa: E402

WORLD = MPI.COMM_WORLD
DEFAULT_SIZES = "4K,64K,1M,16M,64M,256M"
IMPLS = ("neptune_rt", "neptune_rt_direct", "mpi", "gloo")


def init_gloo():
    import torch.distributed as dist
    if dist.is_initialized():
        return dist
    port = None
    if WORLD.rank == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    port = WORLD.bcast(port, root=0)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=WORLD.rank, world_size=WORLD.size)
    return dist


def make_runner(impl: str, buf: np.ndarray, name: str, comm_direct, segment: int):
    """A zero-argument callable doing one in-place float32 sum all-reduce of `buf` with `impl`."""
    if impl == "neptune_rt":
        return lambda: nrt.allreduce_(buf, name=name, op="sum")
    if impl == "neptune_rt_direct":
        return lambda: _C.allreduce_inplace(comm_direct, buf, "float32", "sum", "auto", segment, 120.0)
    if impl == "mpi":
        return lambda: WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if impl == "gloo":
        import torch
        dist = init_gloo()
        tensor = torch.from_numpy(buf)
        return lambda: dist.all_reduce(tensor)
    raise ValueError(f"unknown impl {impl!r} (choose from {', '.join(IMPLS)})")


def algo_of(impl: str, nbytes: int, n: int) -> str:
    if impl.startswith("neptune_rt"):
        if impl == "neptune_rt" and nbytes <= int(os.environ.get("NEPTUNE_RT_EAGER_BYTES_RESOLVED", 16384)):
            return "eager"
        return _C.choose_allreduce_algorithm(nbytes, n)
    return "default"


def count_wrong(run, buf: np.ndarray) -> int:
    n, r = WORLD.size, WORLD.rank
    buf[:] = (np.arange(buf.size) % 7 + r + 1).astype(np.float32)
    run()
    expected = (np.arange(buf.size) % 7 * n + n * (n + 1) // 2).astype(np.float32)
    wrong = int(np.count_nonzero(buf != expected))
    return WORLD.allreduce(wrong, op=MPI.SUM)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated sizes in bytes (4K, 64M, ...)")
    p.add_argument("--max-size", default=None, help="drop sizes above this")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--segment-bytes", type=parse_size, default=0, help="ring segment for the direct path")
    p.add_argument("--link", default="shm", help="label for the link (shm, 1gbit, ...)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.max_size:
        sizes = [s for s in sizes if s <= parse_size(args.max_size)]
    impls = [i for i in args.impls.split(",") if i]
    for impl in impls:
        if impl not in IMPLS:
            p.error(f"unknown impl {impl!r}; choose from {', '.join(IMPLS)}")
    nrt.init()
    from neptune_rt import _env
    os.environ["NEPTUNE_RT_EAGER_BYTES_RESOLVED"] = str(_env.get("NEPTUNE_RT_EAGER_BYTES"))
    direct = _C.Communicator(WORLD)
    n = WORLD.size
    rows = []
    for nbytes in sizes:
        count = nbytes // 4
        buffers = {impl: np.zeros(count, np.float32) for impl in impls}
        runners = {impl: make_runner(impl, buffers[impl], f"bench.{nbytes}", direct, args.segment_bytes)
                   for impl in impls}
        wrong = {impl: count_wrong(runners[impl], buffers[impl]) for impl in impls}
        reps = max(1, min(100, (8 << 20) // max(nbytes, 1)))

        def zero(impl: str) -> None:
            buffers[impl][:] = 0  # timed runs reduce zeros: no overflow, no denormals

        times = timed_interleaved(WORLD, runners, args.trials, reps, warmup=1, prepare=zero)
        for impl in impls:
            med, lo, hi = summarize(times[impl])
            algbw = nbytes / med / 1e9
            rows.append({
                "impl": impl, "algo": algo_of(impl, nbytes, n), "np": n, "size_bytes": nbytes, "count": count,
                "dtype": "float32", "op": "sum", "codec": "none", "time_us": med * 1e6,
                "time_us_min": lo * 1e6, "time_us_max": hi * 1e6, "algbw_gbps": algbw,
                "busbw_gbps": algbw * 2 * (n - 1) / n if n > 1 else algbw, "wire_bytes": None,
                "max_rel_err": 0.0, "wrong": wrong[impl], "link": args.link, "trials": args.trials,
                "reps": reps,
            })
    if WORLD.rank == 0:
        print(f"# all-reduce, {n} ranks, link={args.link}, median of {args.trials} interleaved trials "
              f"(min-max in brackets); busbw = algbw * 2(n-1)/n")
        table = [dict(r, size=format_size(r["size_bytes"]),
                      spread=f"[{r['time_us_min']:.0f}-{r['time_us_max']:.0f}]") for r in rows]
        print_table(table, [("size(B)", "size", ""), ("count", "count", "d"), ("type", "dtype", ""),
                            ("redop", "op", ""), ("impl", "impl", ""), ("algo", "algo", ""),
                            ("time(us)", "time_us", ".1f"), ("spread", "spread", ""),
                            ("algbw(GB/s)", "algbw_gbps", ".3f"), ("busbw(GB/s)", "busbw_gbps", ".3f"),
                            ("#wrong", "wrong", "d")])
        print_ratios(rows)
        write_json(args.json, rows)
    nrt.shutdown()


def print_ratios(rows: list[dict]) -> None:
    by = {(r["size_bytes"], r["impl"]): r for r in rows}
    print("\n# neptune_rt (engine) time ratios: peer time / ours (>1 means we are faster)")
    for nbytes in sorted({r["size_bytes"] for r in rows}):
        ours = by.get((nbytes, "neptune_rt"))
        if not ours:
            continue
        parts = [f"vs {peer}: {by[(nbytes, peer)]['time_us'] / ours['time_us']:.2f}x"
                 for peer in ("mpi", "gloo", "neptune_rt_direct") if (nbytes, peer) in by]
        print(f"{format_size(nbytes):>6}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
