"""The scheduler's output: one immutable `Plan` (per-rank local batch, micro-batch and accumulation steps,
global batch, learning-rate scale, noise scale, predicted step time and goodput) and the per-step statistics
row every rank contributes. Pure; exercised through tests/schedule/.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

__all__ = ["Plan", "STAT_COLUMNS", "stats_row", "micro_split"]

# One row per rank per step, all-gathered: every rank then feeds the same matrix to its scheduler.
#   local_batch    samples this rank computed this step
#   compute_s      forward+backward seconds (all micro-batches), measured before any wait for other ranks
#   local_sq_norm  |g_i|^2 of this rank's own mean gradient before the all-reduce (-1: not measured)
#   avg_sq_norm    |g|^2 of the all-reduced (weighted) gradient (-1: not measured)
#   step_s         wall seconds of the whole step, communication included
#   oom            0; else this rank ran out of memory in this step: the size of the micro-batch that did, or -1
#                  (oom=True) for "the plan's micro-batch"
STAT_COLUMNS = ("local_batch", "compute_s", "local_sq_norm", "avg_sq_norm", "step_s", "oom")


def stats_row(local_batch: int, compute_s: float, local_sq_norm: float = -1.0, avg_sq_norm: float = -1.0,
              step_s: float = 0.0, oom: bool | int = False) -> list[float]:
    """One rank's row; `oom`: False, True (the plan's micro-batch ran out of memory) or the failed micro-batch's
    size (rows that arrive a step late, as through StatsPipe, cannot rely on the plan in force then)."""
    return [float(local_batch), float(compute_s), float(local_sq_norm), float(avg_sq_norm), float(step_s),
            _oom_value(oom)]


def _oom_value(oom: Any) -> float:
    """The row's oom column: -1 for a flag (a bool, numpy's or torch's too), else the failed size (0: none)."""
    if isinstance(oom, bool) or getattr(oom, "dtype", None) is not None and "bool" in str(oom.dtype):
        return -1.0 if bool(oom) else 0.0
    return float(oom)


def micro_split(local_batch: int, max_micro: int) -> list[int]:
    """Near-equal micro-batches of at most max_micro samples (larger ones first) summing to local_batch."""
    if local_batch <= 0:
        return []
    steps = -(-local_batch // max_micro)
    base, extra = divmod(local_batch, steps)
    return [base + 1] * extra + [base] * (steps - extra)


@dataclass(frozen=True)
class Plan:
    """What every rank does from step `step` on. `weight(r)` is the rank's gradient weight b_r / B, to give
    `DistributedOptimizer.set_weight` / `CommHookState.set_weight` so the reduced gradient is the exact
    global-batch mean."""
    version: int
    step: int
    global_batch: int
    local_batches: tuple[int, ...]
    max_micro: tuple[int, ...]
    lr_scale: float = 1.0
    noise_scale: float = 0.0
    predicted_step_s: float = 0.0
    predicted_goodput: float = 0.0
    reason: str = "initial"
    accum_steps: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        if sum(self.local_batches) != self.global_batch:
            raise ValueError(f"plan: local batches {list(self.local_batches)} do not sum to the global batch "
                             f"{self.global_batch}")
        object.__setattr__(self, "accum_steps",
                           tuple(len(micro_split(b, m)) for b, m in zip(self.local_batches, self.max_micro)))

    @property
    def world_size(self) -> int:
        return len(self.local_batches)

    def weight(self, rank: int) -> float:
        return self.local_batches[rank] / self.global_batch

    def micro_batches(self, rank: int) -> list[int]:
        """Sizes of the micro-batches rank `rank` runs this step (gradient accumulation when > 1)."""
        return micro_split(self.local_batches[rank], self.max_micro[rank])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Plan":
        d = {k: v for k, v in d.items() if k != "accum_steps"}
        d["local_batches"], d["max_micro"] = tuple(d["local_batches"]), tuple(d["max_micro"])
        return cls(**d)

    def digest(self) -> str:
        """Hash of the decision (floats rounded to 12 significant digits), to compare across ranks."""
        def canon(v: Any) -> Any:
            return float(f"{v:.12g}") if isinstance(v, float) and math.isfinite(v) else v
        body = {k: canon(v) for k, v in self.to_dict().items()}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def describe(self) -> str:
        acc = "" if max(self.accum_steps) == 1 else f" accum={list(self.accum_steps)}"
        return (f"plan v{self.version} from step {self.step}: B={self.global_batch} "
                f"local={list(self.local_batches)}{acc} lr_scale={self.lr_scale:.3f} "
                f"noise_scale={self.noise_scale:.1f} step={self.predicted_step_s * 1e3:.1f}ms "
                f"goodput={self.predicted_goodput:.1f}/s ({self.reason})")


def check_rows(rows: Sequence[Sequence[float]], world_size: int) -> None:
    if len(rows) != world_size or any(len(r) != len(STAT_COLUMNS) for r in rows):
        raise ValueError(f"scheduler: expected {world_size} statistics rows of {len(STAT_COLUMNS)} values "
                         f"({', '.join(STAT_COLUMNS)}), got {len(rows)} rows")
    # A NaN time would stay in the time model's averages for good (every later comparison false: the split flaps
    # every step), an infinite one would freeze it. Norms may be non-finite (an fp16 overflow): the noise scale
    # skips such steps.
    for rank, row in enumerate(rows):
        oom = float(row[STAT_COLUMNS.index("oom")])
        if not (oom == -1 or (oom >= 0 and oom == int(oom))):
            raise ValueError(f"scheduler: rank {rank}'s statistics row has oom = {oom}; it must be 0, -1 (out of "
                             f"memory at the plan's micro-batch) or the size of the micro-batch that ran out")
        for column in ("local_batch", "compute_s", "step_s"):
            value = float(row[STAT_COLUMNS.index(column)])
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"scheduler: rank {rank}'s statistics row has {column} = {value}; batch sizes and "
                                 f"seconds must be finite and >= 0 (measure them with time.perf_counter)")
