"""Gradient buckets for DistributedOptimizer: parameters are grouped (in reverse order, the order backward
produces their gradients) into flat buffers of up to `bucket_bytes`, and each parameter's `.grad` becomes a
view into its bucket. A full bucket is handed to the engine as one tensor, reduced in place: no fusion copies
in the engine and one host staging copy per bucket for GPU tensors. Engine codecs (int8/int4/onebit) instead
get one engine tensor per parameter (views into the bucket), so their error feedback stays keyed by parameter
name, submitted as one group (neptune_rt/grouped.py): the engine fuses exactly the bucket, never by arrival.
Exercised through tests/torch/test_optimizer.py and tests/torch/test_reproducibility.py.
"""
from __future__ import annotations

import itertools
from typing import Any

import torch

from neptune_rt import engine as _engine
from neptune_rt.torch import _wire
from neptune_rt.torch.compression import Compressor

__all__ = ["GradBucket", "plan_buckets"]


class GradBucket:
    """One flat gradient buffer shared by a few parameters, all-reduced once they are all ready."""

    def __init__(self, params: list[torch.Tensor], names: list[str], prefix: str):
        self.params = params
        self.names = names
        first = params[0]
        self.flat = torch.zeros(sum(p.numel() for p in params), dtype=first.dtype, device=first.device)
        self.views: dict[torch.Tensor, torch.Tensor] = {}
        offset = 0
        for p in params:
            self.views[p] = self.flat[offset:offset + p.numel()].view(p.shape)
            offset += p.numel()
        self.prefix = prefix
        # Named after its parameters, never by position: identical on every rank with the same model.
        self.name = prefix + (names[0] if len(names) == 1 else f"{names[0]}+{len(names) - 1}more")
        self.ready: set[torch.Tensor] = set()
        self.handles: list = []  # engine Handles (dense) or one GroupHandle (codecs): wait(drive=False) each
        self.transformed = False  # local momentum ran on this step's gradients (once, even if it stopped part way)
        self._wire: tuple[torch.Tensor, Any] | None = None

    @property
    def submitted(self) -> bool:
        return bool(self.handles)

    def take_grad(self, p: torch.Tensor) -> None:
        """Moves p's gradient into the bucket (if it is not already a view of it) and marks p ready."""
        view = self.views[p]
        if p.grad is None:
            view.zero_()  # this rank produced no gradient for p: it still takes part, with zeros
        elif p.grad.data_ptr() != view.data_ptr():
            if p.grad.is_sparse:
                raise ValueError(f"neptune_rt: rank {_engine.rank()}: parameter '{self.names[self.params.index(p)]}' "
                                 f"has a sparse gradient; DistributedOptimizer all-reduces dense gradients only")
            view.copy_(p.grad)
        p.grad = view
        self.ready.add(p)

    def full(self) -> bool:
        return len(self.ready) == len(self.params)

    def submit(self, compression: Compressor, op: str, prescale: float, postscale: float) -> None:
        codec = getattr(compression, "codec", "none")
        adaptive = getattr(compression, "adaptive", True)
        wire, ctx = compression.compress(self.flat)
        self._wire = (wire, ctx)
        if codec == "none":
            self.handles = [_engine.allreduce_async_(wire, self.name, op, codec, prescale, postscale, hand_over=True)]
        else:
            # Engine codec: one engine tensor per parameter (error feedback is kept per name), submitted as one
            # group, so the engine fuses exactly this bucket, in parameter order, whatever the timing
            # (compressed results are bit-reproducible given the seed; the DDP hook does the same). The group
            # itself is the handle: one wait for all its members.
            sizes = [p.numel() for p in self.params]
            parts = _wire.flat_parts(wire, list(zip(itertools.accumulate(sizes, initial=0), sizes)))
            names = [self.prefix + name for name in self.names]
            self.handles = [_engine.grouped_allreduce_async_(parts, names, op, codec, prescale, postscale, adaptive,
                                                             hand_over=True)]
        # hand_over: waited on passively (wait), so the engine thread takes it now, woken once.

    def wait(self, compression: Compressor) -> None:
        """Waits for the reduced bucket; afterwards every parameter's .grad (a view) holds its result.

        It sleeps until the engine thread has completed the bucket (`wait(drive=False)`) instead of driving the
        engine's cycles from this thread: on ranks that share cores that thread would compete with the engine
        thread that does the work (measured: docs/torch.md, "Step profile"). It used to sleep until a completion
        callback set an event, which added a hop through the completion thread and the GIL to every bucket
        (docs/torch.md, "Waiting for a bucket"). The engine fails every handle of a stalled or broken job within
        its timeout, so this sleep ends."""
        try:
            for h in self.handles:
                h.wait(drive=False)
            wire, ctx = self._wire
            if wire is not self.flat:
                with torch.no_grad():
                    self.flat.copy_(compression.decompress(wire, ctx))
        finally:
            self.handles = []
            self._wire = None
            self.ready.clear()
            self.transformed = False


def plan_buckets(params: list[torch.Tensor], names: dict[torch.Tensor, str], bucket_bytes: int,
                 prefix: str, first_bucket_bytes: int | None = None) -> list[GradBucket]:
    """Groups parameters, last first, into buckets of one dtype and device, up to `bucket_bytes` each
    (a larger parameter gets a bucket of its own). The first bucket (the last layers, whose gradients
    backward produces first) instead closes as soon as it holds `first_bucket_bytes` (DDP's rule for its
    small first bucket), so that communication starts while backward still runs; None: no special case."""
    buckets: list[GradBucket] = []
    current: list[torch.Tensor] = []
    size = 0
    for p in reversed(params):
        nbytes = p.numel() * p.element_size()
        small_first = not buckets and first_bucket_bytes is not None
        full = size + nbytes > bucket_bytes and not small_first  # the first bucket closes after, not before
        if current and (full or p.dtype != current[0].dtype or p.device != current[0].device):
            buckets.append(GradBucket(current, [names[q] for q in current], prefix))
            current, size = [], 0
        current.append(p)
        size += nbytes
        if small_first and size >= first_bucket_bytes:
            buckets.append(GradBucket(current, [names[q] for q in current], prefix))
            current, size = [], 0
    if current:
        buckets.append(GradBucket(current, [names[q] for q in current], prefix))
    return buckets
