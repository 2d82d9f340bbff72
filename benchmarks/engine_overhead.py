"""Engine overhead benchmark, run under mpirun: what the engine adds on top of the bare collectives.

    mpirun -np 4 --oversubscribe python benchmarks/engine_overhead.py --profile --json out.json

Two cases, each timed interleaved with its bare-MPI peer (benchmarks/common.py: warm-up, then trials, median of
the slowest rank's time per operation):
  latency  a 4 KB float32 all-reduce through the engine, synchronous (`neptune_rt`: allreduce_, the peer of a
           blocking MPI_Allreduce) and as allreduce_async_ + wait (`async_wait`), vs MPI_Allreduce (mpi4py);
           where torch is installed also of a CPU torch tensor over the same memory, through neptune_rt.torch's
           allreduce_ (`torch_sync`) and allreduce_async_ + wait (`torch_async_wait`, by address, and
           `torch_async_host_view`: the same through a host view, as it went before 2026-12-02);
  step     200 float32 CPU buffers shaped like ResNet-50's parameters (161 parameters, then 39 BatchNorm
           running-statistics buffers; channels divided by --divisor), submitted eight ways: `neptune_rt` (one
           named allreduce_async_ each, then all waits), `grouped` (one grouped_allreduce_async_ of the 200
           separate arrays and one wait: the engine packs and unpacks them), `grouped_views` (the same group
           made of views of one flat array, the layout of DDP's gradient_as_bucket_view: reduced where they
           lie), `views_sync` (those views through the synchronous grouped_allreduce_, whose caller drives the
           cycle without waking the engine thread), `views_callback` (asynchronous, the caller asleep until
           the group's completion callback: how the DDP hook waits) and `views_passive` (asleep in
           wait(drive=False) until the engine thread is done: how DistributedOptimizer waits), each also
           `_handed` (`views_callback_handed`, `views_handed`: submitted with hand_over=True, as the hook and
           DistributedOptimizer submit since 2026-12-02: one wake-up of the engine thread, not two), vs one
           MPI_Allreduce of the same total bytes (the fused bare collective) and vs one per tensor.
Each way is checked once against MPI_Allreduce of the same data (#wrong: elements that differ; the latency case
too). --cases latency or step runs one case alone (A/B runs of one figure).
overhead_us = engine time - fused bare collective, for each way; the target (at most 200 us per 100 tensors)
applies to grouped submission. In the environment, NEPTUNE_RT_ALLREDUCE_ALGORITHM=ring|auto picks the engine's
algorithm for the 2.5 MB bucket and NEPTUNE_RT_DRIVE_WINDOW_US the engine thread's drive window (A/B runs; both
are recorded in the rows).
--cpu adds each step way's process CPU time per step (all threads of a rank: caller, engine, completion thread;
time.process_time; spinning waits included), median of 3 interleaved untimed rounds of --cpu-reps steps, highest
over ranks: what a way costs the cores it shares
with its peers, steadier than its wall time on a busy machine (`cpu_us` in the rows).
--profile adds the engine's own timers per operation (nrt.stats(): cycles, hand-offs, submissions that woke the
engine thread, message build, exchange, match, execute, wait) and the Python time to enqueue, from a separate untimed
run (the 4 KB case synchronous and, as latency_4k_async, asynchronous + wait).
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import threading
import time

import numpy as np
from mpi4py import MPI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import TIMING_COLUMNS, print_table, timed_interleaved, timing_fields, write_json  # noqa: E402

import neptune_rt as nrt  # noqa: E402
from neptune_rt import _env  # noqa: E402

WORLD = MPI.COMM_WORLD
PROFILE_KEYS = ("cycles", "handoffs", "submit_wakeups", "build_s", "exchange_s", "match_s", "execute_s", "negotiate_s",
                "wait_s", "cache_hits", "cache_misses")


def resnet50_shapes(divisor: int) -> list[tuple[int, ...]]:
    """ResNet-50's 161 parameter shapes in registration order (channels // divisor), then BatchNorm
    running-statistics buffers (mean, var of each BatchNorm in order) up to 200 tensors."""
    def c(x: int) -> int:
        return max(1, x // divisor)
    params = [(c(64), 3, 7, 7), (c(64),), (c(64),)]
    bn = [c(64)]
    inp = c(64)
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        w, out = c(width), c(width * 4)
        for b in range(blocks):
            params += [(w, inp, 1, 1), (w,), (w,), (w, w, 3, 3), (w,), (w,), (out, w, 1, 1), (out,), (out,)]
            bn += [w, w, out]
            if b == 0:
                params += [(out, inp, 1, 1), (out,), (out,)]
                bn.append(out)
            inp = out
    params += [(1000, c(2048)), (1000,)]
    assert len(params) == 161, len(params)
    buffers = [(ch,) for ch in bn for _ in range(2)]
    return params + buffers[:200 - len(params)]


def engine_step(tensors: list[np.ndarray]):
    names = [f"param.{i}" for i in range(len(tensors))]

    def run() -> None:
        handles = [nrt.allreduce_async_(t, name=name) for t, name in zip(tensors, names)]
        for h in handles:
            h.wait()
    return run


def grouped_sync_step(tensors: list[np.ndarray], prefix: str):
    """One grouped_allreduce_: the caller drives the cycle from the start (no engine-thread wake-up)."""
    names = [f"{prefix}.{i}" for i in range(len(tensors))]
    return lambda: nrt.grouped_allreduce_(tensors, names)


def grouped_callback_step(tensors: list[np.ndarray], prefix: str, hand_over: bool = False):
    """How the DDP hook waits: one completion callback on the group (there it completes DDP's future) sets an event
    that the training thread sleeps on (it never drives the cycle), then the group's wait() collects the results.
    hand_over=True: handed to the engine thread at submission, as the hook does since 2026-12-02."""
    names = [f"{prefix}.{i}" for i in range(len(tensors))]

    def run() -> None:
        arrived = threading.Event()
        group = nrt.grouped_allreduce_async_(tensors, names, hand_over=hand_over)
        group.add_done_callback(lambda _group: arrived.set())
        arrived.wait()
        group.wait()
    return run


def grouped_passive_step(tensors: list[np.ndarray], prefix: str, hand_over: bool = False):
    """How DistributedOptimizer waits: asleep in the group's wait(drive=False) until the engine thread is done.
    hand_over=True: handed to the engine thread at submission, as DistributedOptimizer does since 2026-12-02."""
    names = [f"{prefix}.{i}" for i in range(len(tensors))]
    return lambda: nrt.grouped_allreduce_async_(tensors, names, hand_over=hand_over).wait(drive=False)


def grouped_step(tensors: list[np.ndarray], prefix: str = "group"):
    names = [f"{prefix}.{i}" for i in range(len(tensors))]

    def run() -> None:
        group = nrt.grouped_allreduce_async_(tensors, names)
        if isinstance(group, list):  # builds before GroupHandle returned one handle per tensor
            for h in group:
                h.wait()
        else:
            group.wait()
    return run


def profile(run, ops_per_call: int, calls: int) -> dict:
    """Engine timers and the Python enqueue time per operation, from `calls` untimed calls of `run`."""
    before = nrt.stats()
    WORLD.Barrier()
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
    wall = time.perf_counter() - t0
    after = nrt.stats()
    ops = ops_per_call * calls
    out = {"ops": ops, "wall_us": wall / ops * 1e6}
    for k in PROFILE_KEYS:
        d = after[k] - before[k]
        out[k.replace("_s", "_us") if k.endswith("_s") else k] = (d * 1e6 if k.endswith("_s") else d) / ops
    return out


def cpu_per_call(runs: dict, calls: int, rounds: int = 3) -> dict[str, float]:
    """Process CPU microseconds (every thread of this rank) per call of each way: median of `rounds` interleaved
    rounds of `calls` calls."""
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, run in runs.items():
            WORLD.Barrier()
            t0 = time.process_time()
            for _ in range(calls):
                run()
            samples[k].append((time.process_time() - t0) / calls * 1e6)
    return {k: statistics.median(v) for k, v in samples.items()}


def enqueue_time(buf: np.ndarray, calls: int) -> float:
    """Microseconds in allreduce_async_ alone (Python, binding, enqueue), per call."""
    spent = 0.0
    for _ in range(calls):
        t0 = time.perf_counter()
        h = nrt.allreduce_async_(buf, name="lat4k")
        spent += time.perf_counter() - t0
        h.wait()
    return spent / calls * 1e6


def torch_latency_cases(buf4k: np.ndarray) -> dict:
    """The 4 KB all-reduce of a CPU torch tensor sharing buf4k's memory, where torch is installed: Horovod's
    synchronous `allreduce_` (`torch_sync`) and `allreduce_async_` + wait (`torch_async_wait`, the way the
    synchronous call went before it became one native call), and an asynchronous all-reduce of it through a host
    view (`torch_async_host_view`: the engine API's general path with the by-address branch turned off, as
    asynchronous calls went before 2026-12-02 and as tensors the engine cannot take by address still go; since the
    torch layer's short path it no longer includes that layer)."""
    try:
        import torch
        import neptune_rt.torch as nrt_torch
    except ImportError:
        return {}
    allreduce_module = importlib.import_module("neptune_rt.allreduce")
    t4k = torch.from_numpy(buf4k)

    def async_host_view() -> None:  # the engine API's general path (the torch layer's short path skips it)
        by_address = allreduce_module._torch_by_address
        allreduce_module._torch_by_address = lambda _tensor: False
        try:
            allreduce_module.allreduce_async_(t4k, name="lat4k", op="sum").wait()
        finally:
            allreduce_module._torch_by_address = by_address
    return {"torch_sync": lambda: nrt_torch.allreduce_(t4k, name="lat4k", op=nrt_torch.Sum),
            "torch_async_wait": lambda: nrt_torch.allreduce_async_(t4k, name="lat4k", op=nrt_torch.Sum).wait(),
            "torch_async_host_view": async_host_view}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=7)
    p.add_argument("--latency-reps", type=int, default=300, help="4 KB all-reduces per trial")
    p.add_argument("--step-reps", type=int, default=20, help="200-tensor steps per trial")
    p.add_argument("--divisor", type=int, default=8, help="ResNet-50 channels are divided by this")
    p.add_argument("--profile", action="store_true", help="print the engine's timers per operation")
    p.add_argument("--cpu", action="store_true", help="each step way's process CPU time per step (all threads)")
    p.add_argument("--cpu-reps", type=int, default=1000, help="steps per way and round of --cpu")
    p.add_argument("--cases", default="latency,step", help="comma-separated: latency (4 KB), step (200 tensors)")
    p.add_argument("--link", default="shm")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    cases = set(args.cases.split(","))
    if not cases or not cases <= {"latency", "step"}:
        p.error(f"--cases {args.cases!r}: use latency, step or both")
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    rng = np.random.default_rng(r)

    buf4k = rng.integers(-8, 8, 1024).astype(np.float32)
    latency = {"neptune_rt": lambda: nrt.allreduce_(buf4k, name="lat4k"),
               "async_wait": lambda: nrt.allreduce_async_(buf4k, name="lat4k").wait(),
               "mpi": lambda: WORLD.Allreduce(MPI.IN_PLACE, buf4k, op=MPI.SUM)}
    latency.update(torch_latency_cases(buf4k))
    shapes = resnet50_shapes(args.divisor)
    tensors = [rng.integers(-8, 8, int(np.prod(s))).astype(np.float32).reshape(s) for s in shapes]
    total = sum(t.nbytes for t in tensors)
    flat = np.zeros(total // 4, np.float32)
    backing = np.zeros(total // 4, np.float32)  # grouped_views: the 200 tensors as views of one array
    views = [v.reshape(t.shape) for v, t in zip(np.split(backing, np.cumsum([t.size for t in tensors])[:-1]), tensors)]
    step = {"neptune_rt": engine_step(tensors),
            "grouped": grouped_step(tensors),
            "grouped_views": grouped_step(views, "views"),
            "views_sync": grouped_sync_step(views, "views"),
            "views_callback": grouped_callback_step(views, "views"),
            "views_callback_handed": grouped_callback_step(views, "views", hand_over=True),
            "views_passive": grouped_passive_step(views, "views"),
            "views_handed": grouped_passive_step(views, "views", hand_over=True),
            "mpi_fused": lambda: WORLD.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM),
            "mpi_per_tensor": lambda: [WORLD.Allreduce(MPI.IN_PLACE, t, op=MPI.SUM) for t in tensors]}

    def rescale(_label: str) -> None:  # keep the in-place sums small (integers, exact) from trial to trial
        buf4k[:] = rng.integers(-8, 8, buf4k.size)
        for t in tensors:
            t.ravel()[:] = rng.integers(-8, 8, t.size)
        backing[:] = np.concatenate([t.ravel() for t in tensors])

    lat = timed_interleaved(WORLD, latency, args.trials, args.latency_reps, warmup=1, prepare=rescale) \
        if "latency" in cases else {}
    stp = timed_interleaved(WORLD, step, args.trials, args.step_reps, warmup=1, prepare=rescale) \
        if "step" in cases else {}

    # Correctness of what was timed: one step of each engine way against MPI_Allreduce of the same data.
    def wrong_separate(run) -> int:
        rescale("")
        want = [t.copy() for t in tensors]
        for w in want:
            WORLD.Allreduce(MPI.IN_PLACE, w, op=MPI.SUM)
        run()
        return int(sum(np.count_nonzero(t != w) for t, w in zip(tensors, want)))

    def wrong_views(run) -> int:
        rescale("")
        want = np.concatenate([t.ravel() for t in tensors])
        WORLD.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
        run()
        return int(np.count_nonzero(backing != want))

    def wrong_latency(run) -> int:  # one 4 KB all-reduce (in place) against MPI_Allreduce of the same data
        rescale("")
        want = buf4k.copy()
        WORLD.Allreduce(MPI.IN_PLACE, want, op=MPI.SUM)
        run()
        return int(np.count_nonzero(buf4k != want))

    wrong_lat = {impl: wrong_latency(latency[impl]) for impl in lat if impl != "mpi"}
    wrong = {"neptune_rt": wrong_separate(engine_step(tensors)), "grouped": wrong_separate(grouped_step(tensors)),
             "grouped_views": wrong_views(grouped_step(views, "views")),
             "views_sync": wrong_views(grouped_sync_step(views, "views")),
             "views_callback": wrong_views(grouped_callback_step(views, "views")),
             "views_callback_handed": wrong_views(grouped_callback_step(views, "views", hand_over=True)),
             "views_passive": wrong_views(grouped_passive_step(views, "views")),
             "views_handed": wrong_views(grouped_passive_step(views, "views", hand_over=True))} if stp else {}

    rows = []
    load = os.getloadavg()[0]
    window_us = _env.get("NEPTUNE_RT_DRIVE_WINDOW_US")
    for impl, samples in lat.items():
        rows.append({"impl": impl, "case": "latency_4k", "np": n, "tensors": 1, "size_bytes": buf4k.nbytes,
                     **timing_fields(samples), "link": args.link,
                     "loadavg_1min": load, "drive_window_us": window_us, "wrong": wrong_lat.get(impl, 0)})
    for impl, samples in stp.items():
        rows.append({"impl": impl, "case": "step_200", "np": n, "tensors": len(tensors), "size_bytes": total,
                     **timing_fields(samples), "link": args.link,
                     "loadavg_1min": load,
                     "allreduce_algorithm": os.environ.get("NEPTUNE_RT_ALLREDUCE_ALGORITHM", "auto"),
                     "drive_window_us": window_us,
                     "wrong": wrong.get(impl, 0)})
    by = {(x["case"], x["impl"]): x for x in rows}
    if lat:
        lat_ratio = by[("latency_4k", "neptune_rt")]["time_us"] / by[("latency_4k", "mpi")]["time_us"]
        by[("latency_4k", "neptune_rt")]["ratio_vs_mpi"] = lat_ratio
    overheads = {}
    for impl in wrong:
        overheads[impl] = by[("step_200", impl)]["time_us"] - by[("step_200", "mpi_fused")]["time_us"]
        by[("step_200", impl)]["overhead_us"] = overheads[impl]
        by[("step_200", impl)]["overhead_us_per_100_tensors"] = overheads[impl] * 100 / len(tensors)

    if args.cpu and stp:
        everyone = WORLD.allgather(cpu_per_call({k: v for k, v in step.items() if k != "mpi_per_tensor"},
                                                args.cpu_reps))
        for impl in everyone[0]:
            by[("step_200", impl)]["cpu_us"] = max(d[impl] for d in everyone)
    prof = {}
    if args.profile and lat:
        prof["latency_4k"] = profile(latency["neptune_rt"], 1, args.latency_reps)
        prof["latency_4k"]["enqueue_us"] = enqueue_time(buf4k, args.latency_reps)
        prof["latency_4k_async"] = profile(latency["async_wait"], 1, args.latency_reps)
    if args.profile and stp:
        prof["step_200"] = profile(step["neptune_rt"], len(tensors), args.step_reps)
        prof["grouped_200"] = profile(step["grouped"], len(tensors), args.step_reps)
        prof["views_200"] = profile(step["grouped_views"], len(tensors), args.step_reps)
        prof["views_sync_200"] = profile(step["views_sync"], len(tensors), args.step_reps)
    if args.profile:
        everyone = WORLD.gather(prof, root=0)
        for case in prof:
            impl, row_case = {"grouped_200": ("grouped", "step_200"), "views_200": ("grouped_views", "step_200"),
                              "latency_4k_async": ("async_wait", "latency_4k"),
                              "views_sync_200": ("views_sync", "step_200")}.get(case, ("neptune_rt", case))
            for row in rows:
                if row["case"] == row_case and row["impl"] == impl:
                    row["profile_rank0"] = everyone[0][case] if r == 0 else None
    if r == 0:
        print(f"# {n} ranks, {args.link}, load average {load:.2f}; step: {len(tensors)} tensors, {total} bytes")
        print_table(rows, [("case", "case", ""), ("impl", "impl", ""), ("size(B)", "size_bytes", "d"),
                           *TIMING_COLUMNS, ("#wrong", "wrong", "d")])
        if lat:
            print(f"latency 4 KB: neptune_rt / MPI_Allreduce = {lat_ratio:.2f}x (target <= 1.5x)")
        for impl, overhead in overheads.items():
            print(f"step of {len(tensors)} ({impl}): engine overhead {overhead:.0f} us = "
                  f"{overhead * 100 / len(tensors):.0f} us per 100 tensors (target <= 200, for grouped submission)")
        if args.cpu and stp:
            print("CPU per step (all threads, highest rank): " + ", ".join(
                f"{impl} {by[('step_200', impl)]['cpu_us']:.0f} us" for impl in step if impl != "mpi_per_tensor"))
        if args.profile:
            print("profile (rank 0, per operation, microseconds unless a count):")
            keys = ["wall_us", "enqueue_us", "cycles", "handoffs", "submit_wakeups", "build_us", "exchange_us",
                    "match_us", "execute_us", "negotiate_us", "wait_us", "cache_hits", "cache_misses"]
            print("  " + " ".join(f"{k:>12}" for k in ["case"] + keys))
            for case, d in prof.items():
                print("  " + " ".join([f"{case:>12}"] + [f"{d[k]:>12.2f}" if k in d else f"{'-':>12}" for k in keys]))
        write_json(args.json, rows)
    nrt.shutdown()


if __name__ == "__main__":
    main()
