"""Shared set-up for the torch workers: neptune_rt plus a gloo process group (from Open MPI's rank variables)
for reference results, single-threaded torch, and a closeness check that names what differs."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

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
