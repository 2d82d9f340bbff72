"""Every NEPTUNE_RT_* environment knob, declared once with its default and meaning.

Read through `get(name)`; `neptune-rt info` lists them all with their current values.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Knob:
    name: str
    default: str
    meaning: str
    parse: Callable[[str], object]


def _bytes(text: str) -> int:
    """'64M', '512k', '1048576' -> bytes."""
    text = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in scale:
        return int(float(text[:-1]) * scale[text[-1]])
    return int(text)


def _choice(*allowed: str) -> Callable[[str], str]:
    """A parser that accepts one of `allowed` (case and surrounding blanks ignored)."""
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value
    return parse


def _count(text: str) -> int:
    """A non-negative integer."""
    value = int(text)
    if value < 0:
        raise ValueError(f"{value} is negative")
    return value


def _window_us(text: str) -> float:
    """Microseconds from 0 to 1e6 (one second)."""
    value = float(text)
    if not 0 <= value <= 1e6:
        raise ValueError(f"{value} is outside 0..1000000")
    return value


KNOBS: dict[str, Knob] = {k.name: k for k in [
    Knob("NEPTUNE_RT_FUSION_BYTES", "64M", "small all-reduces are fused into buckets up to this size", _bytes),
    Knob("NEPTUNE_RT_EAGER_BYTES", "16K",
         "all-reduces up to this size travel inside the negotiation message (one round trip)", _bytes),
    Knob("NEPTUNE_RT_CYCLE_TIME_MS", "1.0",
         "pause between negotiation rounds that made no progress (ms)", float),
    Knob("NEPTUNE_RT_DRIVE_WINDOW_US", "50",
         "how long the engine thread leaves a fresh submission to a caller that is about to wait for it (the "
         "caller then runs the cycle itself, with no thread hand-off); asynchronous work nobody waits on starts "
         "at most this much later (work handed over, by a passive wait, a completion callback or "
         "DistributedOptimizer, at once; about 2 ms later, once, after a run of submissions waited on at once) (us)",
         _window_us),
    Knob("NEPTUNE_RT_TIMEOUT_SECONDS", "300",
         "a collective, negotiation, init() or shutdown() that waits longer on its peers fails (s)", float),
    Knob("NEPTUNE_RT_STALL_WARNING_SECONDS", "60",
         "warn (naming the missing ranks and tensors) after waiting this long (s)", float),
    Knob("NEPTUNE_RT_SEGMENT_BYTES", "0",
         "ring segment size; 0 = built-in default (512K, and compressed segments of at least 128K of payload)",
         _bytes),
    Knob("NEPTUNE_RT_CODEC_BLOCK", "256", "values per scale block of the int8/int4/onebit codecs", int),
    Knob("NEPTUNE_RT_ROUNDING", "nearest", "int8/int4 rounding: 'nearest' or 'stochastic'", str),
    Knob("NEPTUNE_RT_SEED", "0", "seed of the stochastic-rounding generator (with step, rank, index)", int),
    Knob("NEPTUNE_RT_COMPRESSED_ALGORITHM", "auto",
         "compressed all-reduce: 'ring' (requantizing ring), 'two_phase' (scatter-reduce + all-gather), or "
         "'auto' (ring up to 8 ranks, two_phase above)", str),
    Knob("NEPTUNE_RT_COST_MODEL", "1",
         "1: per bucket, use compression only where the probed cost model predicts it is faster; "
         "0: always use the requested codec", lambda v: v.strip().lower() not in ("0", "false", "no", "off")),
    Knob("NEPTUNE_RT_DETERMINISTIC", "0",
         "1: no timing-based decisions (no cost-model probe; adaptive codecs compress every bucket of at least "
         "256 KB of fp32 and leave smaller ones dense); set it on every rank",
         lambda v: v.strip().lower() not in ("0", "false", "no", "off", "")),
    Knob("NEPTUNE_RT_CACHE_CAPACITY", "1024",
         "response-cache slots: a negotiated all-reduce/broadcast is then announced as one bit of a bit vector "
         "(least recently used slots are reused); 0 disables the cache; set the same value on every rank", _count),
    Knob("NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES", "auto",
         "dense buckets above 64K and up to this size are all-reduced by MPI_Iallreduce (the MPI library's own "
         "algorithms, with the engine's timeout), larger ones by our own (NEPTUNE_RT_ALLREDUCE_ALGORITHM); 'auto': "
         "256K where ours is halving_doubling, else 1M; 0: always ours; set the same value on every rank",
         lambda v: None if v.strip().lower() == "auto" else _bytes(v)),
    Knob("NEPTUNE_RT_ALLREDUCE_ALGORITHM", "auto",
         "our algorithm for dense buckets above 64K: 'auto' (halving_doubling up to 4M in a power-of-two world of "
         "4+ ranks, else ring), 'ring', or 'halving_doubling' (power-of-two worlds); set the same value on every "
         "rank", _choice("auto", "ring", "halving_doubling")),
    Knob("NEPTUNE_RT_MPI", "wheel",
         "build time (Makefile): 'wheel' uses the Open MPI + mpi4py wheels, 'system' the mpicc on PATH", str),
    Knob("NEPTUNE_RT_DATA_DIR", "",
         "neptune-rt train: directory of the Fashion-MNIST / MNIST IDX files when --data-dir is not given", str),
    Knob("NEPTUNE_RT_TRAIN_FAULT", "",
         "tests only: 'kill-at-step:N' or 'kill-in-checkpoint:N' makes neptune-rt train SIGKILL itself there", str),
]}


def get(name: str):
    """The parsed value of knob `name` (environment, else default); a bad value raises ValueError."""
    knob = KNOBS[name]
    raw = os.environ.get(name, knob.default)
    try:
        return knob.parse(raw)
    except ValueError as err:
        raise ValueError(f"{name}={raw!r} is not valid ({knob.meaning}; default {knob.default})") from err
