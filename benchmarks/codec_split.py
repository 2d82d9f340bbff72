"""Where one compressed all-reduce's time goes, from the engine's own per-bucket records: encode, decode and the
rest (waiting for the wire and for peers), per rank, under mpirun or benchmarks/cluster.py.

    python benchmarks/cluster.py --nodes 2 --rate 1gbit -- python benchmarks/codec_split.py --codec onebit --json F
    python benchmarks/cluster.py --nodes 2 --rate none -- python benchmarks/codec_split.py --codec onebit --json F

Comparing a shaped link with an unshaped one tells whether a codec's all-reduce is bound by the link or by the
codec work of a rank (docs/design.md, "Compressed all-reduce: where the time goes").
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import print_table, write_json  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="onebit")
    p.add_argument("--size-mb", type=int, default=64, help="fp32 MiB per rank")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--link", default=os.environ.get("NRT_LINK", "?"), help="label for the link")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    nrt.init()
    world = MPI.COMM_WORLD
    r = nrt.rank()
    x = np.random.default_rng(r).standard_normal(args.size_mb << 18).astype(np.float32)
    for _ in range(3):  # warm-up: residuals, scratch buffers, the cost model's first probe
        nrt.allreduce_(x, name="split", codec=args.codec, adaptive=False)
    nrt.bucket_records(True)
    times = []
    for _ in range(args.reps):
        world.Barrier()
        t0 = time.perf_counter()
        nrt.allreduce_(x, name="split", codec=args.codec, adaptive=False)
        times.append(time.perf_counter() - t0)
    recs = [rec for rec in nrt.bucket_records(True) if rec.get("codec") == args.codec]
    row = {"rank": r, "np": nrt.size(), "codec": args.codec, "size_bytes": x.nbytes, "link": args.link,
           "time_ms": float(np.median(times)) * 1e3, "time_ms_min": min(times) * 1e3,
           "encode_ms": float(np.median([c["encode_s"] for c in recs])) * 1e3,
           "decode_ms": float(np.median([c["decode_s"] for c in recs])) * 1e3,
           "rest_ms": float(np.median([c["wire_s"] for c in recs])) * 1e3,
           "wire_bytes": int(recs[0]["bytes_wire"]) if recs else 0, "reps": args.reps}
    rows = world.gather(row, root=0)
    if r == 0:
        print_table(rows, [("rank", "rank", "d"), ("time(ms)", "time_ms", ".1f"), ("min", "time_ms_min", ".1f"),
                           ("encode", "encode_ms", ".1f"), ("decode", "decode_ms", ".1f"), ("rest", "rest_ms", ".1f"),
                           ("wire(B)", "wire_bytes", "d")])
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
