"""Built-in models for `neptune-rt train`: `mlp` (ReLU layers of --hidden), `dropout-mlp` (the CSV experiment's
Dense 64 / Dropout / Dense 64 / Dropout / output) and `linear`. Exercised through the CLI tests.
"""
from __future__ import annotations

import torch.nn as nn

__all__ = ["build_model", "MODELS"]

MODELS = ("mlp", "dropout-mlp", "linear")


def build_model(name: str, inputs: int, classes: int, hidden: list[int], dropout: float,
                data: str = "") -> nn.Module:
    """`name` may be "auto": dropout-mlp for csv:DIR data, mlp otherwise."""
    if name == "auto":
        name = "dropout-mlp" if data.startswith("csv:") else "mlp"
    if name == "linear":
        return nn.Linear(inputs, classes)
    if name == "dropout-mlp":
        return nn.Sequential(nn.Linear(inputs, 64), nn.ReLU(), nn.Dropout(dropout),
                             nn.Linear(64, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, classes))
    if name == "mlp":
        layers: list[nn.Module] = []
        width = inputs
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        return nn.Sequential(*layers, nn.Linear(width, classes))
    raise ValueError(f"unknown model {name!r} (choose one of: auto, {', '.join(MODELS)})")
