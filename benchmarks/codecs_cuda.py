"""CUDA codec throughput on one GPU: encode / decode / decode_add GB/s (bytes read + written) per codec and block
size, next to a device-to-device copy of the same fp32 buffer (the memory-bandwidth limit), interleaved trials
timed with CUDA events. Needs torch with CUDA and neptune_rt._C_cuda (built when nvcc is found).

    python benchmarks/codecs_cuda.py [--size-mb 1024] [--trials 20] [--json benchmarks/results/codecs_cuda.json]

Every row is also a correctness check: the payload of the first --check-values values is compared byte for byte
with the CPU codec's (same seed, step, rank), and `wrong` counts differing bytes.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
from pathlib import Path

import numpy as np

from common import write_json
from neptune_rt import codecs



def cpu_benchmark_cases(blocks: list[int]) -> list[tuple[str, int, str, bool]]:
    """The CPU benchmark's rows (benchmarks/codecs.py, loaded by path: `codecs` is also a stdlib module)."""
    spec = importlib.util.spec_from_file_location("nrt_bench_codecs", Path(__file__).with_name("codecs.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cases(blocks)


def event_timer(torch):
    """Returns time(fn) -> milliseconds of one call, measured with CUDA events on the current stream."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time_ms(fn) -> float:
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)

    return time_ms


def payload_mismatches(cuda_mod, torch, codec: str, block: int, rounding: str, x, m: int) -> int:
    """Bytes that differ between the CUDA and the CPU payload of x[:m] (with error feedback from zero)."""
    kw = dict(block=block, rounding=rounding, seed=1, step=2, rank=3)
    host = x[:m].cpu().numpy()
    want = codecs.encode(codec, host, np.zeros_like(host), **kw)
    out = torch.zeros(want.size, dtype=torch.uint8, device="cuda")
    res = torch.zeros(m, dtype=torch.float32, device="cuda")
    cuda_mod.encode(codec, x.data_ptr(), m, res.data_ptr(), out.data_ptr(), out.numel(), **kw)
    return int(np.count_nonzero(out.cpu().numpy() != want))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=1024.0, help="fp32 buffer size in MiB (several times the L2)")
    p.add_argument("--trials", type=int, default=20, help="timed trials per row (median reported), >= 5")
    p.add_argument("--blocks", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--check-values", type=int, default=1 << 20, help="values compared with the CPU codec per row")
    p.add_argument("--json", type=Path, help="write the rows here as a JSON list")
    args = p.parse_args()
    try:
        import torch
        from neptune_rt import _C_cuda
    except ImportError as e:
        sys.exit(f"codecs_cuda.py needs torch and neptune_rt._C_cuda: {e}")
    if not torch.cuda.is_available() or _C_cuda.device_count() == 0:
        sys.exit("codecs_cuda.py: no CUDA device visible (torch.cuda.is_available() is False)")
    trials = max(5, args.trials)
    n = int(args.size_mb * 2**20) // 4
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, dtype=torch.float32, device="cuda", generator=gen)
    copy_dst = torch.empty_like(x)
    dst = torch.empty_like(x)
    payload = torch.empty(codecs.payload_bytes("none", n), dtype=torch.uint8, device="cuda")
    residual = torch.zeros_like(x)
    time_ms = event_timer(torch)
    rows = []
    name = torch.cuda.get_device_name()
    print(f"# {name}: {n} fp32 values ({args.size_mb} MiB), median of {trials} CUDA-event timings; "
          f"copy = device-to-device tensor copy")
    print(f"{'codec':>7} {'block':>5} {'rounding':>10} {'ef':>3} {'op':>10} {'time(ms)':>9} {'min-max':>15} "
          f"{'GB/s':>8} {'x copy':>6} {'#wrong':>6}")
    for codec, block, rounding, ef in cpu_benchmark_cases(args.blocks):
        blk = block or codecs.DEFAULT_BLOCK
        size = _C_cuda.payload_bytes(codec, n, blk)
        res_ptr = residual.data_ptr() if ef else 0
        kw = dict(block=blk, rounding=rounding, seed=1)
        ops = {
            "encode": (lambda: _C_cuda.encode(codec, x.data_ptr(), n, res_ptr, payload.data_ptr(), size, **kw),
                       4 * n + size + (8 * n if ef else 0)),
            "decode": (lambda: _C_cuda.decode(payload.data_ptr(), size, dst.data_ptr(), n), size + 4 * n),
            "decode_add": (lambda: _C_cuda.decode_add(payload.data_ptr(), size, dst.data_ptr(), n), size + 8 * n),
        }
        copy = (lambda: copy_dst.copy_(x), 8 * n)
        times: dict[str, list[float]] = {"copy": [], **{k: [] for k in ops}}
        for fn, _ in [copy, *ops.values()]:
            fn()  # warm-up
        for _ in range(trials):  # interleaved: copy, encode, decode, decode_add, copy, ...
            times["copy"].append(time_ms(copy[0]))
            for k, (fn, _) in ops.items():
                times[k].append(time_ms(fn))
        residual.zero_()
        wrong = payload_mismatches(_C_cuda, torch, codec, blk, rounding, x, min(n, args.check_values))
        copy_gbps = copy[1] / statistics.median(times["copy"]) / 1e6
        for op, moved in [("copy", copy[1])] + [(k, m) for k, (_, m) in ops.items()]:
            ts = times[op]
            med = statistics.median(ts)
            gbps = moved / med / 1e6
            rows.append(dict(impl="torch" if op == "copy" else "neptune_rt_cuda", device=name, codec=codec,
                             block=block, rounding=rounding, error_feedback=ef, op=op, count=n, bytes_moved=moved,
                             payload_bytes=size, time_ms=med, time_ms_min=min(ts), time_ms_max=max(ts), gbps=gbps,
                             vs_copy=gbps / copy_gbps, wrong=wrong))
            print(f"{codec:>7} {block or '-':>5} {rounding:>10} {'y' if ef else 'n':>3} {op:>10} {med:9.3f} "
                  f"{min(ts):7.3f}-{max(ts):<7.3f} {gbps:8.1f} {gbps / copy_gbps:6.2f} {wrong:6d}")
    write_json(args.json, rows)
    if any(r["wrong"] for r in rows):
        sys.exit("codecs_cuda.py: CUDA payloads differ from the CPU codec's (see #wrong)")


if __name__ == "__main__":
    main()
