"""DistributedOptimizer's construction-time checks: `named_parameters` well formed, and every rank holding the
same named parameters and bucket sizes (one small collective, failing on every rank with the differences).
Exercised by tests/torch/test_mismatch.py and tests/torch/test_optimizer.py."""
from __future__ import annotations

import hashlib
from typing import Iterable

import torch

from neptune_rt import engine as _engine

__all__ = ["check_named", "check_same_parameters_everywhere"]


def check_named(named_parameters: Iterable[tuple[str, torch.Tensor]] | None) -> dict[torch.Tensor, str] | None:
    if named_parameters is None:
        return None
    named = list(named_parameters)
    if any(not isinstance(item, tuple) or len(item) != 2 for item in named):
        raise ValueError("neptune_rt: named_parameters should be a sequence of (name, parameter) tuples, "
                         "usually model.named_parameters()")
    names = [n for n, _ in named]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"neptune_rt: named_parameters has duplicate names: {', '.join(duplicates)}")
    return {p: n for n, p in named}


def _signature(names: dict[torch.Tensor, str], bucket_bytes: int, first_bucket_bytes: int | None) -> list[str]:
    params = sorted(f"{n}:{tuple(p.shape)}:{str(p.dtype).removeprefix('torch.')}:{int(p.requires_grad)}"
                    for p, n in names.items())
    return [f"bucket_bytes:{bucket_bytes}", f"first_bucket_bytes:{first_bucket_bytes}"] + params


def check_same_parameters_everywhere(names: dict[torch.Tensor, str], bucket_bytes: int,
                                      first_bucket_bytes: int | None) -> None:
    """One small collective at construction: every rank must hold the same named parameters, otherwise a
    rank would wait for gradients that never come. Fails on every rank with the differences."""
    from neptune_rt.torch.functions import allgather_object
    signature = _signature(names, bucket_bytes, first_bucket_bytes)
    digest = hashlib.sha256("\n".join(signature).encode()).hexdigest()
    digests = allgather_object(digest, name="DistributedOptimizer.check")
    if len(set(digests)) == 1:
        return
    everyone = allgather_object(signature, name="DistributedOptimizer.check.names")
    mine = set(signature)
    lines = []
    for r, theirs in enumerate(everyone):
        theirs = set(theirs)
        if theirs != mine:
            only_mine, only_theirs = sorted(mine - theirs)[:5], sorted(theirs - mine)[:5]
            lines.append(f"  vs rank {r}: only here {only_mine}, only there {only_theirs}")
    raise ValueError(
        f"neptune_rt: rank {_engine.rank()}: DistributedOptimizer parameters differ across ranks "
        f"(bucket_bytes, first_bucket_bytes, then name:shape:dtype:requires_grad):\n" + "\n".join(lines) +
        "\nEvery rank must build the same model and wrap an optimizer over the same parameters.")
