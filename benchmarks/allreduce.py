"""All-reduce benchmark, run under mpirun: neptune_rt (through the engine: dense fp32, dense fp16, and each
codec; and its native collective called directly, the engine's `auto` algorithm choice: recursive doubling,
halving-doubling or the ring by size) vs MPI_Allreduce of the same MPI (mpi4py) vs torch.distributed gloo
(fp32, and fp16 as DDP's fp16_compress_hook sends it) vs Horovod when installed, interleaved in one run.

    mpirun -np 4 --oversubscribe python benchmarks/allreduce.py --sizes 4K,64K,1M,16M,64M --json out.json
    python benchmarks/cluster.py --nodes 4 --rate 1gbit -- python benchmarks/allreduce.py \
        --sizes 64M --codecs none,fp16,int8,onebit,auto --link 1gbit

Columns follow nccl-tests: algbw = S/t and busbw = algbw * 2(n-1)/n on the uncompressed fp32 size S (so
compressed and fp16 rows compare directly with dense fp32 ones); wire(B) = bytes this rank sent; err = max
relative error vs the exact fp64 sum; #wrong counts elements of a verification all-reduce (a fresh tensor
name, so no residual) farther from the exact sum than the per-element bound of the codec's error model
(neptune_rt/codecs/bounds.py: e.g. int8 absmax blocks err by at most scale/2 per element per quantization).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import format_size, parse_size, print_table, summarize, timed_interleaved, write_json  # noqa: E402

import neptune_rt as nrt  # noqa: E402
from neptune_rt import _C, _env  # noqa: E402
from neptune_rt.codecs.bounds import allreduce_bound  # noqa: E402

WORLD = MPI.COMM_WORLD
DEFAULT_SIZES = "4K,64K,1M,16M,64M,256M"
PEERS = ("neptune_rt_direct", "mpi", "gloo", "gloo_fp16", "horovod")


@dataclass
class Case:
    impl: str      # neptune_rt, neptune_rt_direct, mpi, gloo, horovod
    codec: str     # none (dense), fp16, bf16, int8, int4, onebit, auto
    dtype: str     # dtype of the buffer all-reduced
    adaptive: bool = False  # neptune_rt codecs: let the cost model fall back to dense

    @property
    def label(self) -> str:
        return f"{self.impl}:{self.dtype}:{self.codec}" + (":adaptive" if self.adaptive else "")


def init_gloo():
    import torch.distributed as dist
    if dist.is_initialized():
        return dist
    port = None
    if WORLD.rank == 0:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
    port = WORLD.bcast(port, root=0)
    if "MASTER_ADDR" not in os.environ:  # under benchmarks/cluster.py it names node 0's address
        os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(os.environ.get("NRT_BENCH_GLOO_PORT", port))
    dist.init_process_group("gloo", rank=WORLD.rank, world_size=WORLD.size)
    return dist


def make_runner(case: Case, buf: np.ndarray, name: str, direct, segment: int, last: dict):
    """A zero-argument callable doing one in-place sum all-reduce of `buf` as `case` says."""
    if case.impl == "neptune_rt":
        def run() -> None:
            handle = nrt.allreduce_async_(buf, name=name, op="sum", codec=case.codec, adaptive=case.adaptive)
            handle.wait()
            last["wire"], last["codec"] = handle.wire_bytes, handle.codec_used
        return run
    if case.impl == "neptune_rt_direct":
        return lambda: _C.allreduce_inplace(direct, buf, case.dtype, "sum", "auto", segment, 300.0)
    if case.impl == "mpi":
        return lambda: WORLD.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    if case.impl == "gloo":
        import torch
        dist = init_gloo()
        tensor = torch.from_numpy(buf)
        return lambda: dist.all_reduce(tensor)
    if case.impl == "horovod":
        import horovod.torch as hvd
        import torch
        tensor = torch.from_numpy(buf)
        return lambda: hvd.allreduce_(tensor, name=name, op=hvd.Sum)
    raise ValueError(f"unknown impl {case.impl!r}")


def build_cases(impls: list[str], codecs: list[str]) -> list[Case]:
    cases = []
    for codec in codecs:
        if codec == "none":
            cases.append(Case("neptune_rt", "none", "float32"))
        elif codec == "fp16-dense":
            cases.append(Case("neptune_rt", "none", "float16"))
        else:
            cases.append(Case("neptune_rt", codec, "float32", adaptive=codec == "auto"))
    for impl in impls:
        if impl == "gloo_fp16":
            cases.append(Case("gloo", "none", "float16"))
        elif impl == "horovod":
            try:
                import horovod.torch as hvd
                hvd.init()
                cases.append(Case("horovod", "none", "float32"))
            except ImportError:
                if WORLD.rank == 0:
                    print("# horovod not installed: skipping its rows")
        elif impl in PEERS:
            cases.append(Case(impl, "none", "float32"))
        else:
            raise SystemExit(f"unknown impl {impl!r}; choose from {', '.join(PEERS)}")
    return cases


def verify(case: Case, run, buf: np.ndarray, count: int, last: dict) -> tuple[int, float]:
    """One all-reduce of random data: (#elements outside the error model's bound, max relative error) over
    all ranks."""
    def data(r: int) -> np.ndarray:  # every rank regenerates the others' data: exact fp64 reference
        return (np.random.default_rng(1234 + r).standard_normal(count) * 1e-3).astype(np.float32)

    exact = np.zeros(count, np.float64)
    for r in range(WORLD.size):
        exact += data(r)
    buf[:] = data(WORLD.rank).astype(buf.dtype)
    run()
    scale = max(np.abs(exact).max(), 1e-30) if count else 1.0
    err = np.abs(buf.astype(np.float64) - exact)
    if case.impl == "neptune_rt":
        codec = last["codec"]  # the codec the engine used (auto / adaptive may pick another, or dense)
    else:
        codec = "none"
    if case.dtype == "float16":  # a 16-bit buffer: inputs cast once, partial sums rounded at every hop
        codec, algorithm = "fp16", "ring"
    else:
        algorithm = os.environ.get("NEPTUNE_RT_COMPRESSED_ALGORITHM", "auto")
        algorithm = _C.choose_compressed_algorithm(WORLD.size) if algorithm == "auto" else algorithm
    bound = allreduce_bound(codec, (data(r) for r in range(WORLD.size)), algorithm,
                            block=_env.get("NEPTUNE_RT_CODEC_BLOCK")) if count else err
    wrong = WORLD.allreduce(int(np.count_nonzero(err > bound)), op=MPI.SUM)
    err = WORLD.allreduce(float(err.max() / scale) if count else 0.0, op=MPI.MAX)
    return wrong, err


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated fp32 sizes in bytes (4K, 64M, ...)")
    p.add_argument("--max-size", default=None, help="drop sizes above this")
    p.add_argument("--codecs", default="none",
                   help="neptune_rt rows: none, fp16-dense (an fp16 buffer), fp16, bf16, int8, int4, onebit, auto")
    p.add_argument("--impls", default="neptune_rt_direct,mpi,gloo", help=f"peer rows: {', '.join(PEERS)}")
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--segment-bytes", type=parse_size, default=0,
                   help="segment size of the direct path's collective (0: CollectiveOptions' default)")
    p.add_argument("--link", default="shm", help="label for the link (shm, 1gbit, ...)")
    p.add_argument("--json", default=None, help="write the rows here")
    args = p.parse_args()

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    if args.max_size:
        sizes = [s for s in sizes if s <= parse_size(args.max_size)]
    nrt.init()
    cases = build_cases([i for i in args.impls.split(",") if i], [c for c in args.codecs.split(",") if c])
    direct = _C.Communicator(WORLD)
    eager = int(os.environ.get("NEPTUNE_RT_EAGER_BYTES", 16384)) if "NEPTUNE_RT_EAGER_BYTES" in os.environ \
        else 16384
    n = WORLD.size
    rows = []
    for nbytes in sizes:
        count = nbytes // 4
        bufs = {c.label: np.zeros(count, c.dtype) for c in cases}
        last = {c.label: {"wire": None, "codec": c.codec} for c in cases}
        runners = {c.label: make_runner(c, bufs[c.label], f"bench.{c.label}.{nbytes}", direct,
                                        args.segment_bytes, last[c.label]) for c in cases}
        checks = {c.label: verify(c, runners[c.label], bufs[c.label], count, last[c.label]) for c in cases}
        # Enough repetitions that one wake-up of the engine threads per trial does not dominate; few enough
        # that sums of the 1e-3-scale data stay finite (n**reps * 1e-3 < 3e38 for n <= 5).
        reps = max(1, min(50, (8 << 20) // max(nbytes, 1)))
        rng = np.random.default_rng(WORLD.rank)
        fill = (rng.standard_normal(count) * 1e-3).astype(np.float32)

        def reset(label: str) -> None:  # random data each trial; reps are few enough that sums stay finite
            bufs[label][:] = fill.astype(bufs[label].dtype)

        times = timed_interleaved(WORLD, runners, args.trials, reps, warmup=1, prepare=reset)
        for c in cases:
            med, lo, hi = summarize(times[c.label])
            algbw = nbytes / med / 1e9
            wrong, err = checks[c.label]
            algo = ("eager" if nbytes <= eager and c.codec == "none" else
                    _C.choose_allreduce_algorithm(nbytes * (2 if c.dtype == "float16" else 4) // 4, n)) \
                if c.impl.startswith("neptune_rt") else "default"
            if c.impl == "neptune_rt" and c.codec != "none":
                algo = os.environ.get("NEPTUNE_RT_COMPRESSED_ALGORITHM", "auto")
                algo = _C.choose_compressed_algorithm(n) if algo == "auto" else algo
                if c.codec in ("fp16", "bf16"):  # summable: the dense ring on 16-bit values
                    algo = "ring16"
            rows.append({
                "impl": c.impl, "algo": algo, "np": n, "size_bytes": nbytes, "count": count, "dtype": c.dtype,
                "op": "sum", "codec": c.codec, "codec_used": last[c.label]["codec"] if c.impl == "neptune_rt"
                else ("fp16-cast" if c.dtype == "float16" else "none"),
                "time_us": med * 1e6, "time_us_min": lo * 1e6, "time_us_max": hi * 1e6, "algbw_gbps": algbw,
                "busbw_gbps": algbw * 2 * (n - 1) / n if n > 1 else algbw,
                "wire_bytes": last[c.label]["wire"], "max_rel_err": err, "wrong": wrong, "link": args.link,
                "trials": args.trials, "reps": reps,
            })
    model = nrt.cost_model()
    if WORLD.rank == 0:
        report(rows, n, args)
        if model:
            print(f"\n# cost model (probed at the first adaptive compressed bucket): {model}")
        write_json(args.json, rows)
    nrt.shutdown()


def report(rows: list[dict], n: int, args) -> None:
    print(f"# all-reduce, {n} ranks, link={args.link}, median of {args.trials} interleaved trials "
          f"[min-max]; busbw = algbw * 2(n-1)/n on the fp32 size")
    table = [dict(r, size=format_size(r["size_bytes"]), spread=f"[{r['time_us_min']:.0f}-{r['time_us_max']:.0f}]")
             for r in rows]
    print_table(table, [("size(B)", "size", ""), ("type", "dtype", ""), ("impl", "impl", ""),
                        ("codec", "codec_used", ""), ("algo", "algo", ""), ("time(us)", "time_us", ".1f"),
                        ("spread", "spread", ""), ("algbw(GB/s)", "algbw_gbps", ".3f"),
                        ("busbw(GB/s)", "busbw_gbps", ".3f"), ("wire(B)", "wire_bytes", "d"),
                        ("err", "max_rel_err", ".2e"), ("#wrong", "wrong", "d")])
    print("\n# speed-up of each row over neptune_rt dense fp32 at the same size (time ratio; >1 = faster)")
    for nbytes in sorted({r["size_bytes"] for r in rows}):
        same = [r for r in rows if r["size_bytes"] == nbytes]
        ours = next((r for r in same if r["impl"] == "neptune_rt" and r["codec"] == "none"
                     and r["dtype"] == "float32"), None)
        if not ours:
            continue
        parts = []
        for r in same:
            if r is ours:
                continue
            who = r["impl"] + ("" if r["codec"] == "none" else f"[{r['codec']}]") + \
                ("(fp16)" if r["dtype"] == "float16" else "")
            parts.append(f"{who}: {ours['time_us'] / r['time_us']:.2f}x")
        print(f"{format_size(nbytes):>6}: " + ", ".join(parts))


if __name__ == "__main__":
    main()
