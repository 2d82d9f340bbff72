"""Codec throughput on one CPU thread: encode / decode / decode_add GB/s (bytes read + written) per codec and
block size, next to a numpy copy of the same fp32 buffer (the memory-bandwidth limit), interleaved trials.

    python benchmarks/codecs.py [--size-mb 32] [--trials 7] [--codecs onebit] [--json benchmarks/results/codecs.json]

Every row is also a correctness check: the decoded buffer is compared with the numpy reference once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import write_json
from neptune_rt import codecs
from neptune_rt.codecs import reference


def cases(blocks: list[int]) -> list[tuple[str, int, str, bool]]:
    """(codec, block, rounding, error_feedback)."""
    out = [(c, 0, "nearest", False) for c in ("none", "fp16", "bf16")]
    for c in ("int8", "int4", "onebit"):
        out += [(c, b, "nearest", False) for b in blocks]
    out += [("int8", 256, "stochastic", False), ("int8", 256, "nearest", True), ("int4", 256, "stochastic", True),
            ("int4", 256, "nearest", True), ("onebit", 256, "nearest", True)]
    return out


def timed(fn, trials: int) -> list[float]:
    fn()  # warm-up (page faults, clone resolution)
    ts = []
    for _ in range(trials):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return ts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=32.0, help="fp32 buffer size in MiB")
    p.add_argument("--trials", type=int, default=7, help="timed trials per row (median reported), >= 5")
    p.add_argument("--blocks", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--codecs", default=None, help="comma-separated codecs to run (default: all)")
    p.add_argument("--label", default=None, help="recorded in every row (e.g. which build, in A/B runs)")
    p.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    args = p.parse_args()
    trials = max(5, args.trials)
    n = int(args.size_mb * 2**20) // 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    copy_dst = np.empty_like(x)
    dst = np.empty_like(x)
    payload = np.empty(codecs.payload_bytes("none", n), np.uint8)
    residual = np.zeros_like(x)
    rows = []

    header = f"{'codec':>7} {'block':>5} {'rounding':>10} {'ef':>3} {'op':>10} {'time(ms)':>9} {'min-max':>15} " \
             f"{'GB/s':>7} {'x memcpy':>8} {'#wrong':>6}"
    print(f"# {n} fp32 values ({args.size_mb} MiB), single thread, median of {trials}; memcpy = numpy copyto")
    print(header)
    wanted = set(args.codecs.split(",")) if args.codecs else None
    for codec, block, rounding, ef in cases(args.blocks):
        if wanted is not None and codec not in wanted:
            continue
        blk = block or codecs.DEFAULT_BLOCK
        size = codecs.payload_bytes(codec, n, blk)
        res = residual if ef else None
        enc = lambda: codecs.encode(codec, x, res, block=blk, rounding=rounding, seed=1, out=payload)  # noqa: E731
        ops = {
            "encode": (enc, 4 * n + size + (8 * n if ef else 0)),
            "decode": (lambda: codecs.decode(payload[:size], dst), size + 4 * n),
            "decode_add": (lambda: codecs.decode_add(payload[:size], dst), size + 8 * n),
        }
        # Interleave: memcpy, then each op, per trial round (A B A B ...), so drift hits all alike.
        times = {"memcpy": [], **{k: [] for k in ops}}
        for fn in [lambda: np.copyto(copy_dst, x)] + [f for f, _ in ops.values()]:
            fn()
        for _ in range(trials):
            times["memcpy"] += timed(lambda: np.copyto(copy_dst, x), 1)
            for k, (f, _) in ops.items():
                times[k] += timed(f, 1)
        # Correctness of this row: the C++ payload decodes to what the numpy reference decodes.
        residual[:] = 0
        check_n = min(n, 1 << 16)
        got = codecs.decode(codecs.encode(codec, x[:check_n], block=blk, rounding=rounding, seed=1))
        want = reference.decode(reference.encode(codec, x[:check_n], block=blk, rounding=rounding, seed=1))
        wrong = int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
        memcpy_gbps = 8 * n / statistics.median(times["memcpy"]) / 1e9
        for op, (_, moved) in [("memcpy", (None, 8 * n))] + list(ops.items()):
            ts = times[op]
            med = statistics.median(ts)
            gbps = moved / med / 1e9
            row = dict(impl="numpy" if op == "memcpy" else "neptune_rt", codec=codec, block=block,
                       rounding=rounding, error_feedback=ef, op=op, count=n, bytes_moved=moved,
                       payload_bytes=size, time_ms=med * 1e3, time_ms_min=min(ts) * 1e3,
                       time_ms_max=max(ts) * 1e3, gbps=gbps, vs_memcpy=gbps / memcpy_gbps, wrong=wrong,
                       label=args.label)
            rows.append(row)
            print(f"{codec:>7} {block or '-':>5} {rounding:>10} {'y' if ef else 'n':>3} {op:>10} {med * 1e3:9.2f} "
                  f"{min(ts) * 1e3:7.2f}-{max(ts) * 1e3:<7.2f} {gbps:7.2f} {gbps / memcpy_gbps:8.2f} {wrong:6d}")
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
