"""The Trainer's learning-rate schedule: a multiplier of the peak learning rate per step, linear warm-up then
cosine, linear or constant. Pure; exercised by tests/train/test_lr_schedule.py.
"""
from __future__ import annotations

import math

__all__ = ["lr_factor", "SCHEDULES"]

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at `step` (0-based): linear warm-up over `warmup` steps (reaching 1
    at step warmup - 1), then cosine or linear decay to 0 at `total`, or constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r} (use one of {', '.join(SCHEDULES)})")
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1 + math.cos(math.pi * progress)) if schedule == "cosine" else 1.0 - progress
