"""`BatchScheduler`: the pure, deterministic policy that turns every rank's per-step statistics into a
`Plan` -- a water-filled split of the global batch over uneven ranks (damped, with hysteresis) and, in
goodput mode, the global batch that maximises throughput x statistical efficiency. Every rank feeds it the same
all-gathered rows and gets the same plan. Tested in tests/schedule/test_scheduler.py and under mpirun.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

from neptune_rt.schedule.goodput import LR_RULES, NoiseScale, efficiency, lr_scale
from neptune_rt.schedule.plan import STAT_COLUMNS, Plan, check_rows
from neptune_rt.schedule.throughput import LinearTimeModel
from neptune_rt.schedule.waterfill import integer_split, makespan

__all__ = ["BatchScheduler"]

log = logging.getLogger("neptune_rt.schedule")
_COL = {name: i for i, name in enumerate(STAT_COLUMNS)}
_MAX_SPEEDUP = 8.0  # per-sample speed of any rank relative to the median rank, at most (see _coeffs)
# Timed steps every rank's model needs before the split moves: one step cannot tell a slower rank from a noisy
# step (on identical ranks of a busy machine a single early step re-split [64]*4 into [70, 59, 58, 69]).
_MIN_TIMED_STEPS = 3
# Goodput intervals between explorations of another batch size (see _choose_batch), doubled up to 2^5 times
# while explorations leave an intercept unknown.
_EXPLORE_EVERY = 3
_MAX_EXPLORE_BACKOFF = 5


class BatchScheduler:
    """Plans per-rank local batches (and, with `adaptive_batch`, the global batch).

    world_size, global_batch: ranks and the starting global batch.
    base_batch: the batch B0 the learning rate is tuned for (default: global_batch); lr_scale and the
        statistical efficiency are relative to it.
    max_micro: largest micro-batch per rank (an int for all, a list, or later `set_max_micro` from probing);
        a larger share is run as gradient accumulation of up to `max_accum` micro-batches.
    min_local: smallest share of any rank (>= 1 keeps every rank in the noise-scale estimate).
    damping: fraction of the way to the ideal split taken per re-plan (1 = jump at once).
    hysteresis: a new split is adopted only if it predicts a step faster by more than this fraction.
    warmup_steps: first steps whose timings are ignored (allocator and caches warming up).
    adaptive_batch, batch_bounds: let the goodput model choose B in [lo, hi]; it changes B only when the
        predicted goodput improves by more than `goodput_gain` (5%), at most every `goodput_interval` steps.
    lr_rule: "adascale" (default), "sqrt" or "linear": the learning-rate multiplier for a batch other than B0
        (`lr_scale`; the AdaScale gain follows the noise scale every step), and the efficiency model that
        goodput mode uses (the efficiency of a batch depends on the learning rate it is trained with).
    momentum: the optimizer's heavy-ball momentum (SGD's `momentum`; 0 for plain SGD and for optimizers the
        model does not cover): goodput's efficiency then uses the critical batch phi / (1 - m) in place of the
        noise scale phi (`critical_batch`). The learning-rate multiplier stays the AdaScale gain at phi.
    on_change: called with each new Plan (also logged at INFO on logger "neptune_rt.schedule").
    """

    def __init__(self, world_size: int, global_batch: int, *, max_micro: int | Sequence[int] = 1 << 30,
                 max_accum: int = 16, min_local: int = 1, damping: float = 0.5, hysteresis: float = 0.03,
                 warmup_steps: int = 2, adaptive_batch: bool = False, base_batch: int | None = None,
                 batch_bounds: tuple[int, int] | None = None, lr_rule: str = "adascale",
                 goodput_gain: float = 0.05, goodput_interval: int = 10, noise_warmup: int = 10,
                 noise_decay: float = 0.95, time_decay: float = 0.9, momentum: float = 0.0,
                 on_change: Callable[[Plan], None] | None = None):
        if world_size < 1 or global_batch < world_size * min_local:
            raise ValueError(f"scheduler: global batch {global_batch} cannot give {world_size} ranks at least "
                             f"{min_local} samples each")
        if lr_rule not in LR_RULES:
            raise ValueError(f"scheduler: unknown lr_rule {lr_rule!r} (use one of {', '.join(LR_RULES)})")
        if not 0.0 < damping <= 1.0:
            raise ValueError(f"scheduler: damping must be in (0, 1], got {damping}")
        self.world_size, self.base_batch = world_size, int(base_batch or global_batch)
        if self.base_batch < 1:
            raise ValueError(f"scheduler: base_batch must be >= 1, got {base_batch}")
        micro = [int(max_micro)] * world_size if isinstance(max_micro, int) else [int(m) for m in max_micro]
        if len(micro) != world_size or min(micro) < 1:
            raise ValueError(f"scheduler: max_micro needs {world_size} values >= 1, got {micro}")
        self.max_accum, self.min_local = int(max_accum), int(min_local)
        self.damping, self.hysteresis, self.warmup_steps = damping, hysteresis, warmup_steps
        self.adaptive_batch = adaptive_batch
        lo, hi = batch_bounds or (global_batch, global_batch)
        if not (world_size * min_local <= lo <= global_batch <= hi):
            raise ValueError(f"scheduler: batch_bounds {batch_bounds} must hold the global batch {global_batch} "
                             f"and allow {min_local} samples per rank")
        self.batch_bounds = (int(lo), int(hi))
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"scheduler: momentum must be in [0, 1) (the optimizer's heavy-ball momentum), "
                             f"got {momentum}")
        self.lr_rule, self.goodput_gain, self.momentum = lr_rule, goodput_gain, float(momentum)
        self.goodput_interval, self.noise_warmup = goodput_interval, noise_warmup
        self.on_change = on_change
        self.models = [LinearTimeModel(decay=time_decay) for _ in range(world_size)]
        self.noise = NoiseScale(decay=noise_decay)
        self.overhead_s = 0.0  # step time beyond the slowest rank's compute (communication, optimizer)
        self.steps = 0
        self._explored_at: int | None = None  # step of the last exploratory batch size (see _choose_batch)
        # Explorations since every intercept was last known and positive (each doubles the gap to the next).
        self._explore_streak = 0
        self._rows_batch = 0  # global batch of the last rows observed (0: none yet)
        self.history: list[Plan] = []
        self._next_version = 0  # version of the next plan adopted (checkpoints keep only the last 32 of history)
        self.plan = self._adopt(self._split_plan(global_batch, self._equal(global_batch, micro), micro,
                                                 "initial equal split"))

    # -- public API -------------------------------------------------------------------------------------
    @property
    def lr_scale(self) -> float:
        """Learning-rate multiplier for the current global batch relative to `base_batch`, under `lr_rule`.
        With AdaScale it is the gain at the current (smoothed) noise scale, so it moves every step, as in
        AdaScale; `plan.lr_scale` is its value when the plan was adopted."""
        B = self.plan.global_batch
        return lr_scale(self.lr_rule, self.noise.value, B, self.base_batch) if B != self.base_batch else 1.0

    def observe(self, rows: Sequence[Sequence[float]]) -> Plan:
        """Feeds one step's all-gathered statistics (one row per rank, columns STAT_COLUMNS; see
        `neptune_rt.schedule.stats_row`) and returns the plan for the next step."""
        check_rows(rows, self.world_size)
        self.steps += 1
        rows = [[float(v) for v in r] for r in rows]
        if any(r[_COL["oom"]] != 0 for r in rows):
            return self._back_off_oom(rows)
        # The first step at a new global batch runs new tensor shapes (allocator, caches): its timings would
        # mislead the very fit that judges the new batch, so they are ignored, like the warm-up steps. Judged
        # from the rows themselves, so rows that arrive a step late (StatsPipe) are judged right too.
        rows_batch = int(sum(r[_COL["local_batch"]] for r in rows))
        fresh, self._rows_batch = self._rows_batch not in (0, rows_batch), rows_batch
        if self.steps > self.warmup_steps and not fresh:
            for model, r in zip(self.models, rows):
                model.observe(r[_COL["local_batch"]], r[_COL["compute_s"]])
            slowest = max(r[_COL["compute_s"]] for r in rows)
            extra = max(max(r[_COL["step_s"]] for r in rows) - slowest, 0.0)
            self.overhead_s = extra if self.steps == self.warmup_steps + 1 else \
                0.9 * self.overhead_s + 0.1 * extra
        norms = [r[_COL["local_sq_norm"]] for r in rows]
        avg = rows[0][_COL["avg_sq_norm"]]
        # The estimate needs two ranks with samples (a short last batch can leave only one).
        if min(norms) >= 0 and avg >= 0 and sum(r[_COL["local_batch"]] > 0 for r in rows) >= 2:
            self.noise.observe(norms, [int(r[_COL["local_batch"]]) for r in rows], avg)
        if self.steps <= self.warmup_steps:
            return self.plan
        candidate = self._replan()
        if candidate is not None:
            self.plan = self._adopt(candidate)
        return self.plan

    def set_max_micro(self, max_micro: Sequence[int], reason: str = "memory limits") -> Plan:
        """New per-rank micro-batch limits (from `probe_max_micro`); re-splits if the plan no longer fits."""
        micro = tuple(int(m) for m in max_micro)
        if len(micro) != self.world_size or min(micro) < 1:
            raise ValueError(f"scheduler: max_micro needs {self.world_size} values >= 1, got {list(micro)}")
        B = min(self.plan.global_batch, sum(self._hi(micro)))
        split = self.plan.local_batches
        if B != self.plan.global_batch or any(b > h for b, h in zip(split, self._hi(micro))):
            split = tuple(self._ideal_split(B, micro))
        self.plan = self._adopt(self._split_plan(B, split, micro, reason))
        return self.plan

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "overhead_s": self.overhead_s, "plan": self.plan.to_dict(),
                "explored_at": self._explored_at, "explore_streak": self._explore_streak,
                "explored": self._explored_at is not None,  # what checkpoints before re-exploration read
                "rows_batch": self._rows_batch,
                "history": [p.to_dict() for p in self.history[-32:]],
                "models": [m.state_dict() for m in self.models], "noise": self.noise.state_dict(),
                "world_size": self.world_size, "base_batch": self.base_batch, "lr_rule": self.lr_rule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.world_size or state["base_batch"] != self.base_batch:
            raise ValueError(f"scheduler: checkpoint is for {state['world_size']} ranks and base batch "
                             f"{state['base_batch']}, this run has {self.world_size} and {self.base_batch}")
        self.steps, self.overhead_s = int(state["steps"]), float(state["overhead_s"])
        if "explored_at" in state:
            self._explored_at = None if state["explored_at"] is None else int(state["explored_at"])
        else:  # checkpoints before re-exploration kept a flag: explored once, at an unknown step
            self._explored_at = self.steps if state.get("explored") else None
        self._explore_streak = int(state.get("explore_streak", 0))
        self._rows_batch = int(state.get("rows_batch", 0))
        self.plan = Plan.from_dict(state["plan"])
        self.history = [Plan.from_dict(p) for p in state["history"]]
        # Versions go on from the plan in force, not from the kept history's length: a resumed run numbers (and so
        # digests) its plans as the run it continues would have.
        self._next_version = self.plan.version + 1
        for m, s in zip(self.models, state["models"]):
            m.load_state_dict(s)
        self.noise.load_state_dict(state["noise"])

    # -- planning ---------------------------------------------------------------------------------------
    def _hi(self, micro: Sequence[int]) -> list[int]:
        return [m * self.max_accum for m in micro]

    def _equal(self, B: int, micro: Sequence[int]) -> list[int]:
        return integer_split([0.0] * self.world_size, [1.0] * self.world_size, B,
                             [self.min_local] * self.world_size, self._hi(micro))

    def _coeffs(self) -> tuple[list[float], list[float]]:
        if not all(m.ready for m in self.models):
            return [0.0] * self.world_size, [1.0] * self.world_size
        # A noisy fit over a narrow range of sizes can put nearly all of a rank's time in the intercept; its
        # slope near 0 would then make water-filling hand it almost the whole batch. No rank is taken to be
        # more than _MAX_SPEEDUP times faster per sample than the median rank.
        slopes = sorted(m.c for m in self.models)
        floor = slopes[len(slopes) // 2] / _MAX_SPEEDUP
        return [m.a for m in self.models], [max(m.c, floor) for m in self.models]

    def _ideal_split(self, B: int, micro: Sequence[int]) -> list[int]:
        a, c = self._coeffs()
        return integer_split(a, c, B, [self.min_local] * self.world_size, self._hi(micro))

    def _split_bound(self, B: int) -> float:
        """A lower bound on the makespan of any split of B: the water level with no per-rank bounds,
        (B + sum a_i/c_i) / sum 1/c_i (bounds only raise it). Valid while every rank gets >= 1 sample (a rank
        with none would not pay its a_i); 0 (no bound) otherwise."""
        if self.min_local < 1:
            return 0.0
        a, c = self._coeffs()
        return (B + sum(ai / ci for ai, ci in zip(a, c))) / sum(1.0 / ci for ci in c)

    def _step_time(self, split: Sequence[int]) -> float:
        a, c = self._coeffs()
        return makespan(a, c, split) + self.overhead_s

    def _split_plan(self, B: int, split: Sequence[int], micro: Sequence[int], reason: str) -> Plan:
        phi = self.noise.value
        t = self._step_time(split)
        good = B / t * self._efficiency(B) if t > 0 else 0.0
        scale = lr_scale(self.lr_rule, phi, B, self.base_batch) if B != self.base_batch else 1.0
        return Plan(version=self._next_version, step=self.steps, global_batch=B, local_batches=tuple(split),
                    max_micro=tuple(micro), lr_scale=scale, noise_scale=phi, predicted_step_s=t,
                    predicted_goodput=good, reason=reason)

    def _replan(self) -> Plan | None:
        plan, micro = self.plan, self.plan.max_micro
        if self.adaptive_batch and self.noise.count >= self.noise_warmup and \
                self.steps % self.goodput_interval == 0:
            choice = self._choose_batch()
            if choice is not None:
                return choice
        B = plan.global_batch
        if min(m.count for m in self.models) < _MIN_TIMED_STEPS:
            return None
        # Hysteresis: a move must promise more than `hysteresis`, and more than half the timing noise the
        # models see (on a busy machine a 3% threshold alone would chase noise).
        noise = max(m.scale / max(m.predict(b), 1e-9) for m, b in zip(self.models, plan.local_batches))
        threshold = max(self.hysteresis, 0.5 * noise)
        current = self._step_time(plan.local_batches)
        if self._split_bound(B) + self.overhead_s >= (1.0 - threshold) * current:
            return None  # no split of B can beat the current one by the threshold: skip the water-filling
        ideal = self._ideal_split(B, micro)
        if list(ideal) == list(plan.local_batches):
            return None
        # Damped move toward the ideal split: the continuous step, then the integer split that keeps the sum.
        target = [b + self.damping * (i - b) for b, i in zip(plan.local_batches, ideal)]
        lo = [min(b, i) for b, i in zip(plan.local_batches, ideal)]
        hi = [max(b, i) for b, i in zip(plan.local_batches, ideal)]
        floors = [max(int(math.floor(x)), l) for x, l in zip(target, lo)]
        order = sorted(range(self.world_size), key=lambda j: (-(target[j] - floors[j]), j))
        k = 0
        while sum(floors) < B:  # largest remainder, within [current, ideal]
            j = order[k % self.world_size]
            if floors[j] < hi[j]:
                floors[j] += 1
            k += 1
        damped = floors
        if self._step_time(damped) >= (1.0 - threshold) * current:
            return None
        return self._split_plan(B, damped, micro, "re-balanced")

    def _candidates(self) -> list[int]:
        lo, hi = self.batch_bounds
        out, b = {lo, hi, self.plan.global_batch}, float(lo)
        while b < hi:  # a geometric grid, 4 points per doubling
            out.add(int(round(b)))
            b *= 2 ** 0.25
        cap = sum(self._hi(self.plan.max_micro))
        return sorted(x for x in out if lo <= x <= min(hi, cap))

    def _goodput(self, B: int) -> tuple[float, list[int]]:
        split = self._ideal_split(B, self.plan.max_micro)
        return B / self._step_time(split) * self._efficiency(B), split

    def _efficiency(self, B: int) -> float:
        return efficiency(self.noise.value, B, self.base_batch, self.lr_rule, self.momentum)

    def _choose_batch(self) -> Plan | None:
        B, (lo, hi) = self.plan.global_batch, self.batch_bounds
        unknown = any(m.intercept_unknown for m in self.models)
        # Settled: every intercept known and clearly positive (a noise-sized one of a time proportional to the batch
        # is not); a later loss of it is news, worth a prompt look.
        if all(m.identified and m.a >= 0.05 * m.predict(b) for m, b in zip(self.models, self.plan.local_batches)):
            self._explore_streak = 0
        gap = _EXPLORE_EVERY * self.goodput_interval * 2 ** min(max(self._explore_streak - 1, 0), _MAX_EXPLORE_BACKOFF)
        if unknown and lo < hi and (self._explored_at is None or self.steps - self._explored_at >= gap):
            self._explore_streak += 1
            self._explored_at = self.steps
            # One batch size cannot tell per-step overhead from per-sample cost, and without that every B
            # looks equally fast: try a batch twice as large (half, at the upper bound) for an interval, then
            # decide. Again whenever the fit has forgotten the other size or was reset by a change of speed (a
            # load burst during an exploration left the intercept at 0, and the scheduler at B0 for good:
            # tests/schedule/test_scheduler.py), at most every _EXPLORE_EVERY goodput intervals, doubling while
            # explorations leave it unknown (a rank pinned at min_local, time truly proportional to the batch).
            other = min(2 * B, hi, sum(self._hi(self.plan.max_micro))) if B < hi else max(B // 2, lo)
            if other != B:
                return self._split_plan(other, self._ideal_split(other, self.plan.max_micro),
                                        self.plan.max_micro, f"explore throughput at B={other}")
        current, _ = self._goodput(self.plan.global_batch)
        best_B, best = self.plan.global_batch, current
        for B in self._candidates():
            g, _ = self._goodput(B)
            if g > best:
                best_B, best = B, g
        if best_B == self.plan.global_batch or best <= (1.0 + self.goodput_gain) * current:
            return None
        _, split = self._goodput(best_B)
        return self._split_plan(best_B, split, self.plan.max_micro,
                                f"goodput {current:.0f} -> {best:.0f} samples/s (efficiency-weighted)")

    def _back_off_oom(self, rows: list[list[float]]) -> Plan:
        """A rank ran out of memory: each such rank's micro-batch limit drops to 3/4 of the micro-batch that
        failed (the row's oom value when it is a size, else the plan's largest micro-batch for that rank). At a
        micro-batch of 1 there is nothing smaller to try: every rank raises the same error (they all see the same
        rows), instead of failing every step from then on. The caller skips the step (gather_stats protocol) or
        has already applied it without the failing rank's gradient (the Trainer, whose rows come a step late)."""
        micro = list(self.plan.max_micro)
        failures = []
        for r, row in enumerate(rows):
            if row[_COL["oom"]] != 0:
                if row[_COL["local_batch"]] <= 0:
                    continue  # no samples: not a micro-batch that ran out of memory, and no limit to lower
                reported = int(row[_COL["oom"]])
                failed = reported if reported >= 1 else max(self.plan.micro_batches(r) or [1])
                if failed <= 1:
                    raise RuntimeError(f"scheduler: rank {r} ran out of memory at a micro-batch of 1 sample: the "
                                       f"model does not fit that rank's memory (free memory there, or shard the "
                                       f"model); there is no smaller micro-batch to try")
                micro[r] = max(1, min(micro[r], failed * 3 // 4))
                failures.append(f"rank {r} at {failed}")
        if not failures:
            return self.plan
        return self.set_max_micro(micro, f"out of memory ({', '.join(failures)}): max micro-batch "
                                         f"{'/'.join(map(str, micro))}")

    def _adopt(self, plan: Plan) -> Plan:
        self.history.append(plan)
        self._next_version = plan.version + 1
        log.info("%s", plan.describe())
        if self.on_change is not None:
            self.on_change(plan)
        return plan
