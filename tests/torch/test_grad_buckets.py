"""DistributedOptimizer's bucket plan (neptune_rt/torch/grad_buckets.py), in process, no MPI: the small first
bucket closes where DDP's own assignment (torch.distributed._compute_bucket_assignment_by_size) closes its
first bucket, later buckets respect bucket_bytes, and every parameter lands in exactly one bucket, last first."""
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from neptune_rt.torch.grad_buckets import plan_buckets


def mlp(widths: list[int]) -> nn.Module:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


MODELS = [[784, 1024, 1024, 10], [784] + [1024] * 6 + [10], [16, 64, 64, 64, 4], [300, 10, 700, 5]]


@pytest.mark.parametrize("widths", MODELS)
@pytest.mark.parametrize("first", [1 << 10, 1 << 20, 3 << 20])
def test_first_bucket_closes_where_ddp_closes_its_first_bucket(widths: list[int], first: int) -> None:
    params = list(mlp(widths).parameters())
    names = {p: f"p{i}" for i, p in enumerate(params)}
    cap = 4 << 20
    buckets = plan_buckets(params, names, cap, "grad.", first_bucket_bytes=first)
    order = list(reversed(params))
    ddp, _ = dist._compute_bucket_assignment_by_size(order, [first, cap], [False] * len(order))
    assert [names[p] for p in buckets[0].params] == [names[order[i]] for i in ddp[0]]
    flat = [p for b in buckets for p in b.params]
    assert [names[p] for p in flat] == [names[p] for p in order]  # each once, in backward's order
    for b in buckets[1:]:
        assert len(b.params) == 1 or sum(p.numel() * 4 for p in b.params) <= cap


def test_without_first_bucket_bytes_buckets_fill_up_to_bucket_bytes() -> None:
    params = list(mlp(MODELS[0]).parameters())
    names = {p: f"p{i}" for i, p in enumerate(params)}
    assert len(plan_buckets(params, names, 25 << 20, "grad.")) == 1  # 7.5 MB: one bucket
    assert len(plan_buckets(params, names, 25 << 20, "grad.", first_bucket_bytes=1 << 20)) == 2
