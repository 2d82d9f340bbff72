"""The scheduler's collectives, through the neptune_rt engine: all-gathering each rank's statistics row (a few
floats), at once (`gather_stats[_async]`) or one step late inside the next step's gradient cycle (`StatsPipe`,
which costs no wait), and the collective memory probe, in which every rank learns every rank's outcome so one
rank's OOM never leaves another waiting. Exercised under mpirun by tests/schedule/test_schedule_mpi.py.
"""
from __future__ import annotations

import gc
from typing import Any, Callable, Sequence

import numpy as np

from neptune_rt import engine as _engine
from neptune_rt.schedule.memory import MemoryProbe

__all__ = ["gather_stats", "gather_stats_async", "probe_max_micro", "StatsPipe"]


def gather_stats_async(row: Sequence[float], name: str = "schedule.stats") -> Callable[[], list[list[float]]]:
    """Submits this rank's row; returns a function that waits and gives every rank's row (rank order).

    The gather is a sum all-reduce of an (n, 1 + k) float64 table in which each rank fills only its own row
    (a leading 1.0 marks it as present): adding zeros is exact, so every rank gets every row bit for bit, and a
    table this small rides in the engine's negotiation message (an eager sum) instead of costing a cycle of
    its own, as an all-gather would."""
    size, rank = _engine.size(), _engine.rank()
    table = np.zeros((size, 1 + len(row)), dtype=np.float64)
    table[rank, 0] = 1.0
    table[rank, 1:] = row
    handle = _engine.allreduce_async(table, name=name, op="sum")

    def wait() -> list[list[float]]:
        rows = handle.wait()
        missing = [r for r in range(size) if rows[r, 0] != 1.0]
        if missing:
            raise RuntimeError(f"neptune_rt: rank {rank}: '{name}' has no row from rank(s) {missing} (a rank "
                               f"joined early, or ranks sent rows of different lengths)")
        return rows[:, 1:].tolist()
    return wait


def gather_stats(row: Sequence[float], name: str = "schedule.stats") -> list[list[float]]:
    return gather_stats_async(row, name)()


class StatsPipe:
    """Carries each step's statistics row to every rank one step late, at no wait.

    A row submitted after backward misses the engine cycle that carries the gradients (it is negotiated while
    backward runs) and costs a cycle of its own, which the step then waits for (measured on 4 identical ranks:
    0.85 ms of a 74 ms step, most of the scheduler's overhead). Submitted before backward instead, the previous
    step's row rides in the first gradient cycle and has arrived when the gradients have. Per step:

        pipe.send()                       # before backward: the previous step's row, if any
        ... forward, backward, opt.synchronize() / opt.step() ...
        rows = pipe.receive()             # every rank's previous-step rows, or None (first step)
        if rows: sched.observe(rows)      # the plan for the next step, from statistics up to the last one
        pipe.record(stats_row(...))       # this step's row (compute, norms, this step's wall time)

    The plan then lags the statistics by one more step. Every rank must call send/receive in the same steps (a
    resumed run restores the unsent row through state_dict). An out-of-memory step needs the rows at once (every
    rank must skip it): use gather_stats for that protocol."""

    def __init__(self, name: str = "schedule.stats"):
        self.name = name
        self._row: list[float] | None = None
        self._wait: Callable[[], list[list[float]]] | None = None

    def send(self) -> None:
        if self._wait is not None:
            raise RuntimeError(f"neptune_rt: rank {_engine.rank()}: StatsPipe.send called twice without receive")
        if self._row is not None:
            self._wait, self._row = gather_stats_async(self._row, self.name), None

    def receive(self) -> list[list[float]] | None:
        wait, self._wait = self._wait, None
        return wait() if wait is not None else None

    def record(self, row: Sequence[float]) -> None:
        self._row = [float(v) for v in row]

    def state_dict(self) -> dict[str, Any]:
        return {"row": self._row}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._row = None if state.get("row") is None else [float(v) for v in state["row"]]
        self._wait = None


def probe_max_micro(run: Callable[[int], Any], meter: Any, probe: MemoryProbe | None = None,
                    name: str = "schedule.probe") -> list[int]:
    """Collective: finds every rank's largest micro-batch. `run(b)` does one forward+backward on b samples
    without touching optimizer state (use torch.autograd.grad, not .backward(), so that DistributedOptimizer
    or DDP hooks do not fire); `meter` is a CpuMemoryMeter or CudaMemoryMeter. Returns the per-rank limits,
    the same list on every rank."""
    size, rank = _engine.size(), _engine.rank()
    probe = probe or MemoryProbe(size)
    if probe.world_size != size:
        raise ValueError(f"probe_max_micro: rank {rank}: MemoryProbe is for {probe.world_size} ranks, "
                         f"the engine has {size}")
    rounds = 0
    while not probe.done:
        tried = probe.candidates()[rank]
        ok, peak, failure = 1.0, 0.0, None
        if tried > 0:
            try:
                with meter.measure():
                    run(tried)
            except Exception as err:  # noqa: BLE001 -- out of memory is an answer; anything else stops every rank
                ok, failure = (0.0, None) if meter.is_oom(err) else (-1.0, err)
            peak = meter.peak
            gc.collect()
            _empty_device_cache()
        # Every rank's row goes out, a failed one too (ok = -1), so that all ranks leave the loop in the same round:
        # raising here alone would leave the others waiting in this gather.
        rows = gather_stats([tried, ok, peak, meter.capacity], name=f"{name}.{rounds}")
        failed = [r for r, row in enumerate(rows) if row[1] < 0]
        if failure is not None:
            raise RuntimeError(f"probe_max_micro: rank {rank}: run({tried}) failed with an error other than out of "
                               f"memory: {failure!r}; every rank stops probing") from failure
        if failed:
            raise RuntimeError(f"probe_max_micro: rank(s) {failed} failed in run(b) with an error other than out of "
                               f"memory (their own message says which); rank {rank} stops probing too")
        probe.observe([r[:4] for r in rows])
        rounds += 1
    return probe.result()


def _empty_device_cache() -> None:
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
