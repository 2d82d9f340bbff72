"""Emulated slow ranks, a testing and demo aid: a rank made `factor` times slower sleeps in proportion to its
compute (sleep takes no CPU, so four ranks on two shared cores stay faithful); and the parsing of emulated
per-rank memory caps (`--emulate-memory-cap`, measured by CpuMemoryMeter). Used by the Trainer's
`--emulate-slowdown` and by benchmarks/hetero.py; tested in tests/schedule/test_emulate.py and through
tests/train/test_train_balance.py.
"""
from __future__ import annotations

import time
from typing import Any

__all__ = ["slowdown_sleep", "EmulatedSlowdown", "parse_factors", "parse_memory_caps"]


def slowdown_sleep(factor: float, samples: int, per_sample_s: float, fixed_s: float = 0.0) -> float:
    """Sleeps factor x per_sample_s x samples + fixed_s seconds (nothing if that is <= 0); returns the seconds."""
    seconds = factor * per_sample_s * samples + fixed_s
    if seconds > 0:
        time.sleep(seconds)
    return max(seconds, 0.0)


def parse_factors(text: str, world_size: int, what: str = "--emulate-slowdown") -> list[float]:
    """'1,1,1,2' -> [1.0, 1.0, 1.0, 2.0], one factor >= 1 per rank; ValueError naming the flag otherwise."""
    try:
        factors = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated numbers, one per rank (e.g. 1,1,1,2)") \
            from None
    if len(factors) != world_size:
        raise ValueError(f"{what} {text!r} names {len(factors)} ranks but the job has {world_size}; give one "
                         f"factor per rank")
    if any(not f >= 1.0 for f in factors):
        raise ValueError(f"{what} {text!r}: every factor must be >= 1 (1 = the rank's own speed)")
    return factors


def parse_memory_caps(text: str, world_size: int, what: str = "--emulate-memory-cap") -> list[float]:
    """'0,0,1.5' -> [0.0, 0.0, 1.5 MiB in bytes], one cap >= 0 per rank (0: none); ValueError naming the flag."""
    try:
        caps = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected comma-separated MiB, one per rank (e.g. 0,0,1.5)") from None
    if len(caps) != world_size:
        raise ValueError(f"{what} {text!r} names {len(caps)} ranks but the job has {world_size}; give one cap "
                         f"per rank (0: none)")
    if any(not (c >= 0 and c < float("inf")) for c in caps):
        raise ValueError(f"{what} {text!r}: every cap must be a finite number of MiB >= 0 (0: none)")
    return [c * 2**20 for c in caps]


class EmulatedSlowdown:
    """Makes this rank `factor` times slower. Call `before_compute(b)` right before the forward pass of a local
    batch of b samples (the sleep must come before the gradients leave, or the other ranks would not wait for
    it) and `after_compute(b, seconds)` with the real forward+backward seconds after it.

    per_sample_s None: the rank sleeps (factor - 1) x its own measured compute per sample (an EWMA of the
        previous steps; no sleep before the first measurement) x b.
    per_sample_s P: the compute is emulated at P seconds per sample: the rank sleeps factor x P x b, as
        benchmarks/hetero.py does, and `emulated_compute(b)` gives that time (reproducible scheduler inputs).
    """

    def __init__(self, factor: float, per_sample_s: float | None = None, decay: float = 0.8):
        if not factor >= 1.0:
            raise ValueError(f"emulated slowdown factor must be >= 1, got {factor}")
        if per_sample_s is not None and not per_sample_s > 0:
            raise ValueError(f"emulated compute per sample must be > 0 seconds, got {per_sample_s}")
        self.factor, self.fixed, self.decay = float(factor), per_sample_s, decay
        self.measured: float | None = None  # EWMA of the real compute seconds per sample

    def before_compute(self, samples: int) -> float:
        if self.fixed is not None:
            return slowdown_sleep(self.factor, samples, self.fixed)
        if self.measured is None:
            return 0.0
        return slowdown_sleep(self.factor - 1.0, samples, self.measured)

    def after_compute(self, samples: int, real_s: float) -> None:
        if self.fixed is None and samples > 0:
            per = real_s / samples
            self.measured = per if self.measured is None else self.decay * self.measured + (1 - self.decay) * per

    def emulated_compute(self, samples: int) -> float | None:
        """The compute seconds this rank emulates for `samples` (None when they are measured, not emulated)."""
        return None if self.fixed is None else self.factor * self.fixed * samples

    def state_dict(self) -> dict[str, Any]:
        return {"measured": self.measured}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.measured = state.get("measured")

