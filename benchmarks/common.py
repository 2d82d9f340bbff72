"""Shared benchmark plumbing: interleaved timed trials (A B A B ...) with the slowest rank's time, medians
with min-max spread, nccl-tests style tables and --json output (the protocol: docs/design.md, "How we measure")."""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Callable, Sequence

SIZE_SUFFIX = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_size(text: str) -> int:
    """'4K' -> 4096, '64M' -> 67108864, '1000' -> 1000."""
    text = text.strip().upper().removesuffix("B")
    if text and text[-1] in SIZE_SUFFIX:
        return int(float(text[:-1]) * SIZE_SUFFIX[text[-1]])
    return int(text)


def format_size(nbytes: int) -> str:
    for suffix, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{nbytes // scale}{suffix}"
    return str(nbytes)


def timed_interleaved(comm, cases: dict[str, Callable[[], None]], trials: int, reps: int,
                      warmup: int = 1, prepare: Callable[[str], None] | None = None) -> dict[str, list[float]]:
    """Runs each case `reps` times per trial, cases interleaved within every trial and the order rotated by
    one each trial, so that no case always follows the same one (a case can leave the network or the cores
    busy for its successor). Returns per case the list of per-operation seconds of each trial, taken as the
    slowest rank's (an all-reduce is done when the last rank is done)."""
    from mpi4py import MPI
    times: dict[str, list[float]] = {name: [] for name in cases}
    order = list(cases.items())
    for trial in range(warmup + trials):
        shift = trial % len(order) if order else 0
        for name, run in order[shift:] + order[:shift]:
            if prepare:
                prepare(name)
            comm.Barrier()
            start = time.perf_counter()
            for _ in range(reps):
                run()
            elapsed = (time.perf_counter() - start) / reps
            slowest = comm.allreduce(elapsed, op=MPI.MAX)
            if trial >= warmup:
                times[name].append(slowest)
    return times


def summarize(samples: Sequence[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def timing_fields(samples: Sequence[float]) -> dict[str, float]:
    """A JSON row's time_us (median of the trials' per-operation seconds), time_us_min and time_us_max."""
    med, lo, hi = summarize(samples)
    return {"time_us": med * 1e6, "time_us_min": lo * 1e6, "time_us_max": hi * 1e6}


# print_table columns for timing_fields.
TIMING_COLUMNS = [("time(us)", "time_us", ".1f"), ("min", "time_us_min", ".1f"), ("max", "time_us_max", ".1f")]


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (header, key, format spec)."""
    header = "  ".join(f"{h:>{max(len(h), 10)}}" for h, _, _ in columns)
    print(header)
    for row in rows:
        cells = []
        for h, key, spec in columns:
            value = row.get(key, "")
            text = format(value, spec) if value != "" and value is not None else "-"
            cells.append(f"{text:>{max(len(h), 10)}}")
        print("  ".join(cells))


def write_json(path: str | os.PathLike | None, rows: list[dict]) -> None:
    """Writes the rows (creating the folder) and says so; nothing without a path."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(rows, fh, indent=1)
        print(f"# wrote {len(rows)} rows to {path}")


def init_nrt_and_gloo() -> tuple[int, int]:
    """The torch benchmarks' start: one torch thread per rank, neptune_rt's engine, and a gloo process group
    for the DDP peers on the same ranks (MASTER_ADDR/PORT default to this host). Returns (rank, size)."""
    import torch
    import torch.distributed as dist

    import neptune_rt.torch as nrt
    torch.set_num_threads(1)
    nrt.init()
    rank, size = nrt.rank(), nrt.size()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group("gloo", rank=rank, world_size=size)
    return rank, size
