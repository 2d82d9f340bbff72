"""neptune_rt.train: the training front door. `Trainer` (a thin loop over the engine, DistributedOptimizer,
global-batch sharding with neptune_rt.schedule.PlanSampler, and the batch-size scheduler), `TrainConfig` (every
`neptune-rt train` flag), the built-in workloads and the run directory tools behind
`neptune-rt train | make-csv | report | status`. See docs/train.md; tests in tests/train/.
"""
from neptune_rt.train.config import ConfigError, TrainConfig

__all__ = ["Trainer", "TrainConfig", "ConfigError", "run_workload"]


def __getattr__(name: str):
    # Trainer pulls in torch and the engine; importing the package for its config should not.
    if name == "Trainer":
        from neptune_rt.train.trainer import Trainer
        return Trainer
    if name == "run_workload":
        from neptune_rt.train.workload import run_workload
        return run_workload
    raise AttributeError(name)
