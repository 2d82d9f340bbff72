"""neptune_rt.schedule: the dynamic batch-size scheduler (docs/schedule.md).

Pure policy: `BatchScheduler` (heterogeneity balancing by water-filling, goodput-driven global batch),
`Plan`, `PlanSampler` (the one sampler, also the Trainer's), `MemoryProbe`, `EmulatedSlowdown` (a demo and
test aid). Engine / torch helpers: `StatsPipe`, `gather_stats`, `probe_max_micro`, `local_backward`, the memory
meters.
Tests in tests/schedule/.
"""
from neptune_rt.schedule.emulate import EmulatedSlowdown, parse_factors, slowdown_sleep
from neptune_rt.schedule.goodput import NoiseScale, critical_batch, efficiency, lr_scale
from neptune_rt.schedule.memory import CpuMemoryMeter, CudaMemoryMeter, MemoryProbe, SimulatedOOM
from neptune_rt.schedule.plan import STAT_COLUMNS, Plan, micro_split, stats_row
from neptune_rt.schedule.sampler import GlobalBatch, PlanSampler, equal_split
from neptune_rt.schedule.scheduler import BatchScheduler
from neptune_rt.schedule.waterfill import continuous_split, integer_split, makespan

__all__ = [
    "BatchScheduler", "Plan", "STAT_COLUMNS", "stats_row", "micro_split", "PlanSampler", "GlobalBatch", "equal_split",
    "NoiseScale", "critical_batch", "efficiency", "lr_scale", "MemoryProbe", "SimulatedOOM", "CpuMemoryMeter",
    "CudaMemoryMeter",
    "continuous_split", "integer_split", "makespan", "gather_stats", "gather_stats_async", "probe_max_micro",
    "local_backward", "micro_weights", "EmulatedSlowdown", "slowdown_sleep", "parse_factors", "StatsPipe",
]


def __getattr__(name: str):
    # The engine and torch helpers load on first use, so the pure policy imports without either.
    if name in ("gather_stats", "gather_stats_async", "probe_max_micro", "StatsPipe"):
        from neptune_rt.schedule import exchange
        return getattr(exchange, name)
    if name in ("local_backward", "micro_weights"):
        from neptune_rt.schedule import accumulate
        return getattr(accumulate, name)
    raise AttributeError(f"module 'neptune_rt.schedule' has no attribute {name!r}")
