"""Shared set-up for the torch workers: neptune_rt plus a gloo process group (from Open MPI's rank variables)
for reference results, single-threaded torch, a closeness check that names what differs, and the digits
training data (a fixed split, each rank's slice of every global batch, the MLP and its epochs, test accuracy, ranks'
agreement), and
`run_parts`: a worker's argv as `FIRST digits MODE...`, either part or both in one launch."""
from __future__ import annotations

import os
import sys
from typing import Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn as nn

import neptune_rt.torch as nrt


def setup(gloo: bool = True) -> tuple[int, int]:
    torch.set_num_threads(1)
    nrt.init()
    if gloo and not dist.is_initialized():
        dist.init_process_group("gloo", rank=int(os.environ["OMPI_COMM_WORLD_RANK"]),
                                world_size=int(os.environ["OMPI_COMM_WORLD_SIZE"]))
    return nrt.rank(), nrt.size()


def close(what: str, got: torch.Tensor, want: torch.Tensor, atol: float = 1e-6, rtol: float = 0.0) -> None:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        raise AssertionError(f"rank {nrt.rank()}: {what}: shape {tuple(got.shape)} != {tuple(want.shape)}")
    err = (got - want).abs()
    bound = atol + rtol * want.abs()
    if not bool((err <= bound).all()):
        raise AssertionError(f"rank {nrt.rank()}: {what}: max abs error {err.max().item():.3g} "
                             f"(atol {atol}, rtol {rtol})")


def finish(note: str = "") -> None:
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    print(f"OK rank {nrt.rank()} {note}".rstrip(), flush=True)
    nrt.shutdown()


def run_parts(first: str, first_part: Callable[[], None], digits: Callable[[list[str]], None]) -> None:
    """Runs the parts named in argv, `FIRST digits MODE...` (either or both; one launch saves every rank its
    start-up): `first_part()` then prints `PASSED FIRST rank R`, `digits(modes)` trains; `finish()` ends."""
    args = sys.argv[1:]
    if args[:1] == [first]:
        first_part()
        print(f"PASSED {first} rank {nrt.rank()}", flush=True)
        args = args[1:]
    if args[:1] == ["digits"]:
        digits(args[1:])
    elif args:
        raise SystemExit(f"{sys.argv[0]}: unknown part {args[0]!r} ({first}, digits)")
    finish()


def digits_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's digits (digits_arrays: its own CSV, without importing sklearn) scaled to [0, 1], and a fixed
    split of the sample indices: (x, y, 1400 for training, the rest for testing)."""
    from neptune_rt.train.datasets import digits_arrays
    data, target = digits_arrays()
    x, y = torch.tensor(data, dtype=torch.float32) / 16.0, torch.tensor(target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x, y, order[:1400], order[1400:]


def rank_slices(train_idx: torch.Tensor, epoch: int, batch: int) -> Iterator[torch.Tensor]:
    """This rank's slice of each global batch of `batch` samples in one epoch (its own fixed shuffle)."""
    rank, local = nrt.rank(), batch // nrt.size()
    perm = train_idx[torch.randperm(len(train_idx), generator=torch.Generator().manual_seed(epoch))]
    for start in range(0, len(perm) - batch + 1, batch):
        yield perm[start + rank * local: start + (rank + 1) * local]


def digits_mlp(hidden: int = 64) -> nn.Module:
    """The digits workers' model, MLP 64-hidden-10, identical on every rank (seed 0)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train_digits(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor,
                 y: torch.Tensor, train_idx: torch.Tensor, epochs: int, batch: int,
                 after_epoch: Callable[[], None] | None = None) -> None:
    """`epochs` epochs of cross-entropy steps on this rank's slices of each global batch of `batch` samples;
    `forward` is the model or its DDP wrapper, `after_epoch()` runs after each epoch (e.g. a test)."""
    for epoch in range(epochs):
        for idx in rank_slices(train_idx, epoch, batch):
            opt.zero_grad()
            nn.functional.cross_entropy(forward(x[idx]), y[idx]).backward()
            opt.step()
        if after_epoch is not None:
            after_epoch()


def test_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percent of (x, y) the model classifies right."""
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def ranks_agree(model: torch.nn.Module, tag: str) -> torch.Tensor:
    """The model's flattened parameters, after checking they are bitwise equal on every rank (max - min is 0)."""
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    spread = nrt.allreduce(params, name=f"max.{tag}", op=nrt.Max) - nrt.allreduce(params, name=f"min.{tag}",
                                                                                  op=nrt.Min)
    assert spread.abs().max().item() == 0, f"rank {nrt.rank()}: {tag}: ranks diverged"
    return params
