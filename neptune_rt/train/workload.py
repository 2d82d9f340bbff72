"""A built-in workload from a TrainConfig: data (datasets.load), model (models.build_model), optimizer, then
Trainer.fit(). Data and model problems surface here, on every rank alike, before the engine starts or any run
file is written. Exercised by tests/train/test_train_cli.py.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from neptune_rt.train.config import TrainConfig
from neptune_rt.train.datasets import Dataset, load
from neptune_rt.train.models import build_model

__all__ = ["run_workload", "build_optimizer"]


def build_optimizer(config: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def run_workload(config: TrainConfig, data: Dataset | None = None) -> dict[str, Any]:
    """Trains `config` (on `data`, or on the data set it names) and returns the Trainer's result."""
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))  # ranks sharing a node share its cores
    from mpi4py import MPI
    config.check_world(MPI.COMM_WORLD.Get_size())  # e.g. --emulate-slowdown's length, before the slow part
    if data is None:
        data = load(config.data, config.data_dir, config.label_column)
    x_train, y_train = data.x_train, data.y_train
    if config.train_samples:
        x_train, y_train = x_train[:config.train_samples], y_train[:config.train_samples]
    torch.manual_seed(config.seed)
    model = build_model(config.model, data.num_features, data.num_classes, config.hidden_sizes(), config.dropout,
                        config.data)
    from neptune_rt.train.trainer import Trainer
    trainer = Trainer(model, build_optimizer(config, model), (x_train, y_train), (data.x_test, data.y_test),
                      config=config)
    return trainer.fit()
