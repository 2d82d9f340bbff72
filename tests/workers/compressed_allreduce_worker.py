"""MPI worker for tests/test_compressed_allreduce.py: runs compressed all-reduce cases on every rank and checks
them (error vs the exact fp64 sum within the codec's bound, bitwise equal results on all ranks, exact wire
bytes, error-feedback bookkeeping). Every rank prints "OK rank <r>: <n> cases"; any failure aborts all ranks.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from neptune_rt import _C
from neptune_rt import codecs

COMM = MPI.COMM_WORLD


def split_evenly(count: int, n: int) -> list[tuple[int, int]]:
    base, extra = divmod(count, n)
    out, pos = [], 0
    for i in range(n):
        ln = base + (1 if i < extra else 0)
        out.append((pos, ln))
        pos += ln
    return out


def seg_elems(codec: str, block: int, segment_bytes: int) -> int:
    """segment_bytes=0: the default segment, grown until its payload holds MIN_SEGMENT_PAYLOAD bytes."""
    unit = 1 if codecs.is_summable(codec) else block
    wanted = segment_bytes // 4
    if segment_bytes == 0:
        probe = 1 << 20
        wanted = max(_C.DEFAULT_SEGMENT_BYTES // 4,
                     _C.MIN_SEGMENT_PAYLOAD * probe // codecs.payload_bytes(codec, probe, block))
    return max(unit, wanted // unit * unit)


def layout(count, n, codec, block, segment_bytes):
    """Per chunk: list of (offset, length) segments, as compressed_allreduce.cc cuts them."""
    se = seg_elems(codec, block, segment_bytes)
    return [[(off + k, min(se, ln - k)) for k in range(0, ln, se)] for off, ln in split_evenly(count, n)]


def quant_bound(codec, y, segs_by_chunk, block, rounding):
    """Per-element bound of one quantization of y, with the blocks the algorithm actually uses."""
    out = np.zeros(y.size)
    for segs in segs_by_chunk:
        for off, ln in segs:
            for b in range(off, off + ln, block if not codecs.is_summable(codec) else ln):
                end = min(b + (ln if codecs.is_summable(codec) else block), off + ln)
                out[b:end] = codecs.error_bound(codec, y[b:end], block=max(end - b, 1), rounding=rounding)
    return out


def expected_wire(count, n, r, codec, block, segment_bytes, algo):
    pay = [sum(codecs.payload_bytes(codec, ln, block) for _, ln in segs)
           for segs in layout(count, n, codec, block, segment_bytes)]
    if n == 1:
        return 0
    if algo == "two_phase":
        first = sum(pay[j] for j in range(n) if j != r)
        slot = pay
    else:
        first = sum(pay[(r - s) % n] for s in range(n - 1))
        slot = [pay[(p + 1) % n] for p in range(n)]
    return first + sum(slot[p] for p in range(n) if p != (r + 1) % n)


def gradients(case_seed, n, count):
    rng = np.random.default_rng(case_seed)
    scales = rng.uniform(0.1, 10.0, size=n)
    return [(rng.standard_normal(count) * scales[i]).astype(np.float32) for i in range(n)]


def check_identical(buf, what):
    allb = COMM.allgather(buf.tobytes())
    if any(b != allb[0] for b in allb):
        raise AssertionError(f"{what}: results differ between ranks")


def run_sweep(comm, args):
    n, r = COMM.size, COMM.rank
    cases = 0
    for codec in args.codecs:
        for count in (1, n - 1, 7, 1000, 4099):
            for block, segment_bytes in ((256, 0), (8, 64)):
                for rounding in (("nearest", "stochastic") if codec in ("int8", "int4") else ("nearest",)):
                    seg = segment_bytes or _C.DEFAULT_SEGMENT_BYTES
                    what = f"{args.algo} {codec} count={count} block={block} seg={seg} {rounding} np={n}"
                    g = gradients(1000 + count + block, n, count)
                    exact = np.sum(np.array(g, np.float64), axis=0)
                    buf = g[r].copy()
                    res = np.zeros(count, np.float32)
                    chunk = np.zeros(_C.owned_chunk(count, n, r)[1], np.float32)
                    wire = _C.compressed_allreduce_inplace(
                        comm, buf, codec, algorithm=args.algo, block=block, rounding=rounding, seed=7, step=3,
                        residual=res, chunk_residual=chunk, segment_bytes=segment_bytes, timeout=60.0, name=what)
                    check_identical(buf, what)
                    want = expected_wire(count, n, r, codec, block, segment_bytes, args.algo)
                    if wire != want:
                        raise AssertionError(f"{what}: rank {r} reports {wire} wire bytes, expected {want}")
                    segs = layout(count, n, codec, block, segment_bytes)
                    mag = np.sum(np.abs(np.array(g, np.float64)), axis=0)
                    if args.algo == "two_phase":
                        e1 = sum(quant_bound(codec, gi, segs, block, rounding) for gi in g)
                        bound = e1 + quant_bound(codec, mag + e1, segs, block, rounding)
                    else:
                        bound = np.zeros(count)
                        for _ in range(n):
                            bound = bound + quant_bound(codec, mag + bound, segs, block, rounding)
                    bound = bound + mag * n * 2.0 ** -22  # fp32 accumulation of the decoded values
                    err = np.abs(buf.astype(np.float64) - exact)
                    bad = np.nonzero(err > bound)[0]
                    if bad.size:
                        i = bad[0]
                        raise AssertionError(f"{what}: element {i} off by {err[i]:.3g} > bound {bound[i]:.3g}")
                    cases += 1
    return cases


# Per-quantization error of a codec as a fraction of the block's absmax (elementwise-bounded codecs; onebit
# has no such bound: its error is bounded in norm, ||e|| <= sqrt(1 - 1/len) ||x|| per block).
def quant_fraction(codec: str, rounding: str) -> float:
    if codec in ("int8", "int4"):
        levels = 127.0 if codec == "int8" else 7.0
        return (1.0 if rounding == "stochastic" else 0.5) / levels
    return {"none": 0.0, "fp16": 2.0 ** -11, "bf16": 2.0 ** -8}[codec]


def residual_bounds(codec: str, rounding: str, algo: str, n: int, gmax: float) -> tuple[float, float]:
    """Steady-state bounds on max|residual| and max|chunk residual| with error feedback, from the error model:
    a quantization of x errs by at most c * A(x) (A: block absmax). Two-phase: r' = e(g + r), so
    R <= c (G + R), R <= c G / (1 - c); the reduced chunk sums n decoded values (each at most G + R) plus its
    own residual: R2 <= c n (G + R) / (1 - c). Ring: a hop quantizes own values plus the decoded partial sum
    of up to n - 1 others, each decoded value at most its input's absmax: R <= c n (G + R), R <= c n G / (1 - c n).
    Onebit: per block ||r|| <= rho / (1 - rho) max||g|| with rho = sqrt(1 - 1/block) (two-phase; none for
    the ring, whose partial sums the model cannot bound: its check is the no-growth test alone)."""
    slack = 1.0 + 2.0 ** -16
    if codec == "onebit":
        rho = np.sqrt(1.0 - 1.0 / 64)
        return (rho / (1 - rho) * np.sqrt(64) * gmax if algo == "two_phase" else np.inf), np.inf
    c = quant_fraction(codec, rounding) * slack
    if algo == "two_phase":
        own = c * gmax / (1 - c)
        return own, c * n * (gmax + own) / (1 - c)
    return (c * n * gmax / (1 - c * n) if c * n < 1 else np.inf), 0.0


def run_error_feedback(comm, args):
    """Over T = 500 steps with persistent residuals: sum of results == sum of exact sums - sum of final
    residuals; residuals within the bound derived from the codec's error model; and no growth (the residuals'
    RMS over steps 275..499 is within 20% of that over steps 50..274)."""
    n, r = COMM.size, COMM.rank
    count, steps, cases = 3001, args.steps, 0
    windows = ((steps // 10, (steps // 10 + steps) // 2), ((steps // 10 + steps) // 2, steps))
    for codec in args.codecs:
        rounding = "stochastic" if codec == "int4" else "nearest"
        res = np.zeros(count, np.float32)
        off, ln = _C.owned_chunk(count, n, r)
        chunk = np.zeros(ln, np.float32)
        total_out = np.zeros(count, np.float64)
        total_in = np.zeros(count, np.float64)
        gmax, rmax, cmax = 0.0, 0.0, 0.0
        sq = [0.0, 0.0]  # sum of mean r^2 per window
        for t in range(steps):
            g = gradients(50 + t, n, count)
            gmax = max(gmax, max(float(np.abs(x).max()) for x in g))
            total_in += np.sum(np.array(g, np.float64), axis=0)
            buf = g[r].copy()
            _C.compressed_allreduce_inplace(comm, buf, codec, algorithm=args.algo, block=64, seed=1, step=t,
                                            rounding=rounding, residual=res, chunk_residual=chunk,
                                            segment_bytes=2048, timeout=60.0)
            if t % 25 == 0 or t == steps - 1:
                check_identical(buf, f"ef {codec} step {t}")
            total_out += buf
            rmax, cmax = max(rmax, float(np.abs(res).max())), max(cmax, float(np.abs(chunk).max(initial=0.0)))
            for w, (lo, hi) in enumerate(windows):
                if lo <= t < hi:
                    sq[w] += float(np.mean(res.astype(np.float64) ** 2))
        residual_sum = np.sum(np.array(COMM.allgather(res), np.float64), axis=0)
        if args.algo == "two_phase":
            for (o, _), c in zip(COMM.allgather((off, ln)), COMM.allgather(chunk)):
                residual_sum[o:o + c.size] += c
        drift = np.abs(total_out - (total_in - residual_sum)).max()
        tol = steps * n * gmax * 2.0 ** -18
        if drift > tol:
            raise AssertionError(f"ef {args.algo} {codec}: sum of results misses the bookkeeping by {drift:.3g}")
        own_bound, chunk_bound = residual_bounds(codec, rounding, args.algo, n, gmax)
        if rmax > own_bound or cmax > chunk_bound:
            raise AssertionError(f"ef {args.algo} {codec}: residuals reached {rmax:.3g} / chunk {cmax:.3g} over "
                                 f"{steps} steps, above the error model's {own_bound:.3g} / {chunk_bound:.3g}")
        rms = [np.sqrt(sq[w] / (hi - lo)) for w, (lo, hi) in enumerate(windows)]
        if codec != "none" and rms[1] > 1.2 * rms[0]:
            raise AssertionError(f"ef {args.algo} {codec}: residual RMS grew from {rms[0]:.3g} (steps "
                                 f"{windows[0]}) to {rms[1]:.3g} (steps {windows[1]})")
        if r == 0:
            print(f"ef {args.algo} {codec}: max|r| {rmax:.3g} (bound {own_bound:.3g}), max|chunk r| {cmax:.3g} "
                  f"(bound {chunk_bound:.3g}), rms {rms[0]:.3g} -> {rms[1]:.3g}, gmax {gmax:.3g}")
        cases += 1
    return cases


def run_bad_arguments(comm, args):
    """Wrong sizes and names fail with ValueError on the calling rank, before any message is sent."""
    n, r = COMM.size, COMM.rank
    buf = np.ones(100, np.float32)
    bad = [
        dict(codec="int3"),
        dict(codec="int8", algorithm="tree"),
        dict(codec="int8", block=100),
        dict(codec="int8", rounding="up"),
        dict(codec="int8", residual=np.zeros(99, np.float32)),
        dict(codec="int8", chunk_residual=np.zeros(_C.owned_chunk(100, n, r)[1] + 1, np.float32)),
        dict(codec="int8", residual=np.zeros(100, np.float64)),
    ]
    for kwargs in bad:
        try:
            _C.compressed_allreduce_inplace(comm, buf, **kwargs)
        except ValueError as e:
            if r == 0:
                print("rejected:", e)
        else:
            raise AssertionError(f"accepted bad arguments {kwargs}")
    try:
        _C.compressed_allreduce_inplace(comm, buf.astype(np.float64), "int8")
    except ValueError:
        pass
    else:
        raise AssertionError("accepted a float64 buffer")
    return len(bad) + 1


def run_mismatch(comm, args):
    """Rank 0 uses another codec: every rank must fail (size check, MPI truncation or the deadline), none hang."""
    r = COMM.rank
    buf = np.ones(10_000, np.float32)
    t0 = time.monotonic()
    try:
        _C.compressed_allreduce_inplace(comm, buf, "int4" if r == 0 else "int8", algorithm=args.algo,
                                        segment_bytes=4096, timeout=5.0, name="mismatched")
    except (RuntimeError, TimeoutError) as e:
        print(f"rank {r} failed as it should after {time.monotonic() - t0:.1f}s: {e}")
    else:
        raise AssertionError(f"rank {r}: a codec mismatch between ranks went unnoticed")
    if time.monotonic() - t0 > 30:
        raise AssertionError(f"rank {r}: took {time.monotonic() - t0:.0f}s to notice the mismatch")
    return 1


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", default="two_phase")
    p.add_argument("--mode", choices=("sweep", "ef", "args", "mismatch"), default="sweep")
    p.add_argument("--codecs", nargs="+", default=list(codecs.CODECS))
    p.add_argument("--steps", type=int, default=500, help="error-feedback mode: steps with persistent residuals")
    args = p.parse_args()
    comm = _C.Communicator(COMM)
    try:
        run = {"sweep": run_sweep, "ef": run_error_feedback, "args": run_bad_arguments,
               "mismatch": run_mismatch}[args.mode]
        cases = run(comm, args)
    except Exception:  # noqa: BLE001 - any failure must take every rank down, never hang them
        traceback.print_exc()
        sys.stdout.flush()
        COMM.Abort(3)
    COMM.Barrier()
    print(f"OK rank {COMM.rank}: {cases} cases")


if __name__ == "__main__":
    main()
