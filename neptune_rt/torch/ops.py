"""Horovod's PyTorch collectives (`allreduce`, `allgather`, `broadcast` and their async / in-place forms) on top
of the neptune_rt engine. Same names, arguments and defaults as `horovod.torch`: all-reduce averages unless
told otherwise, and `synchronize(handle)` returns the result. Tested by tests/torch/test_ops.py under mpirun.

Where Horovod accepts what the engine does not, this layer bridges the gap (see `_wire`): int16 tensors are
all-reduced as int32 and broadcast / gathered as raw bytes, and integer tensors are pre- and post-scaled here
in float64, as Horovod does, because the engine scales floating-point tensors only.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable

import numpy as np
import torch

from neptune_rt import engine as _engine
from neptune_rt.allreduce import torch_allreduce_async as _torch_allreduce_async
from neptune_rt.allreduce import torch_allreduce_now as _torch_allreduce_now
from neptune_rt.torch import _wire
from neptune_rt.torch.autograd import AllgatherFn, AllreduceFn, BroadcastFn
from neptune_rt.torch.compression import Compression, Compressor

__all__ = ["Average", "Sum", "Min", "Max", "Handle", "allreduce", "allreduce_", "allreduce_async",
           "allreduce_async_", "allgather", "allgather_async", "broadcast", "broadcast_", "broadcast_async",
           "broadcast_async_", "synchronize", "poll", "join", "barrier", "resolve_op"]

# Reduction ops, as Horovod names them. They are the engine's op strings.
Average = "average"
Sum = "sum"
Min = "min"
Max = "max"


class Handle:
    """An operation in flight; `synchronize(handle)` (or `handle.wait()`) returns its result."""

    def __init__(self, inner: _engine.Handle, finish: Callable[[Any], Any] | None = None):
        self._inner = inner
        self._finish = finish
        self._result: Any = None
        self._finished = False

    @property
    def name(self) -> str:
        return self._inner.name

    def done(self) -> bool:
        return self._inner.done()

    def wait(self, timeout: float | None = None) -> Any:
        result = self._inner.wait(timeout)
        if not self._finished:
            self._result = result if self._finish is None else self._finish(result)
            self._finished = True
        return self._result

    def add_done_callback(self, fn: Callable[["Handle"], None]) -> None:
        """Calls fn(handle) on the engine thread once the data has arrived (call wait() there for the result)."""
        self._inner.add_done_callback(lambda _inner: fn(self))


def resolve_op(op: str | None, average: bool | None = None) -> str:
    """Horovod's op resolution: default Average; the deprecated `average=` flag still works."""
    if average is not None:
        if op is not None:
            raise ValueError("neptune_rt: pass either op= or the deprecated average=, not both")
        warnings.warn("average= is deprecated (as in Horovod); use op=Average or op=Sum", DeprecationWarning,
                      stacklevel=3)
        return Average if average else Sum
    op = Average if op is None else op
    if op not in _engine.OPS:
        raise ValueError(f"neptune_rt: unknown op {op!r} (use Average, Sum, Min or Max)")
    return op


def _adaptive(compression: Compressor) -> bool:
    return getattr(compression, "adaptive", True)


def _differentiable(tensor: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and isinstance(tensor, torch.Tensor) and tensor.requires_grad


def _codec(compression: Compressor) -> str:
    # Horovod users may pass their own compressor class with static methods: no codec attribute, dense wire.
    return getattr(compression, "codec", "none")


def _allreduce(tensor: torch.Tensor, in_place: bool, call: str, name: str | None, op: str, prescale: float,
               postscale: float, compression: Compressor, synchronous: bool) -> Any:
    # synchronous: the engine's one-call all-reduce, and the result rather than a Handle. allreduce_async(...).wait()
    # would wake the engine thread for work this thread is about to drive anyway (docs/design.md, "Synchronous
    # calls").
    if compression is Compression.none and type(tensor) is torch.Tensor:
        dtype = _wire.FLOATS.get(tensor.dtype)
        if dtype is not None:  # a float tensor without a codec: nothing to convert here (the short path)
            if synchronous:
                return _torch_allreduce_now(tensor, in_place, dtype, name, op, prescale, postscale)
            return Handle(_torch_allreduce_async(tensor, in_place, dtype, name, op, prescale, postscale))
    _wire.check_tensor(tensor, call, name)
    compressed, ctx = compression.compress(tensor)
    _wire.check_reducible(compressed, call, name)
    work, private = compressed, compressed is not tensor
    dtype = work.dtype
    # Integers are scaled here, in float64 (the engine scales floating-point tensors only).
    int_post = 1.0
    if _wire.is_integer(work) and (prescale != 1.0 or postscale != 1.0):
        if prescale != 1.0:
            work, private = _wire.scale_integer(work, prescale), True
        prescale, postscale, int_post = 1.0, 1.0, postscale
    wide = _wire.REDUCE_AS.get(dtype)
    if wide is not None:
        work, private = work.to(wide), True
    args = (name, op, _codec(compression), prescale, postscale, _adaptive(compression))
    # A private copy (made by the compressor or above) is reduced in place: no second copy.
    if synchronous:
        reduced = _engine.allreduce_(work, *args) if in_place or private else _engine.allreduce(work, *args)
    else:
        inner = _engine.allreduce_async_(work, *args) if in_place or private else _engine.allreduce_async(work, *args)
    if in_place and work is tensor and int_post == 1.0:
        return reduced if synchronous else Handle(inner)  # reduced where it lies; nothing to convert or copy back

    def finish(out: torch.Tensor) -> torch.Tensor:
        if out.dtype != dtype:
            out = out.to(dtype)  # int16 came back as int32: wraps as int16 addition would
        if int_post != 1.0:
            out = _wire.scale_integer(out, int_post)
        out = compression.decompress(out, ctx)
        if not in_place:
            return out
        with torch.no_grad():
            tensor.copy_(out)
        return tensor
    return finish(reduced) if synchronous else Handle(inner, finish)


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    compression: Compressor = Compression.none) -> Handle:
    """Starts an all-reduce of `tensor` into a new tensor; `tensor` is left unchanged."""
    return _allreduce(tensor, False, "allreduce_async", name, resolve_op(op, average), prescale_factor,
                      postscale_factor, compression, False)


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                     op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     compression: Compressor = Compression.none) -> Handle:
    """Starts an in-place all-reduce of `tensor`; the result is `tensor`."""
    return _allreduce(tensor, True, "allreduce_async_", name, resolve_op(op, average), prescale_factor,
                      postscale_factor, compression, False)


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression: Compressor = Compression.none, op: str | None = None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> torch.Tensor:
    """All-reduce (default: average over ranks) into a new tensor; differentiable, as Horovod's."""
    _wire.check_tensor(tensor, "allreduce", name)
    if _differentiable(tensor):
        op = resolve_op(op, average)
        compressed, ctx = compression.compress(tensor)
        if _codec(compression) != "none":
            raise ValueError(f"neptune_rt: a differentiable allreduce cannot use the engine codec "
                             f"{_codec(compression)!r}; detach the tensor or use Compression.fp16/bf16")
        out = AllreduceFn.apply(compressed, name, op, prescale_factor, postscale_factor)
        return compression.decompress(out, ctx)
    return _allreduce(tensor, False, "allreduce", name, resolve_op(op, average), prescale_factor, postscale_factor,
                      compression, True)


def allreduce_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
               op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               compression: Compressor = Compression.none) -> torch.Tensor:
    """In-place all-reduce (default: average over ranks); returns `tensor`."""
    return _allreduce(tensor, True, "allreduce_", name, resolve_op(op, average), prescale_factor, postscale_factor,
                      compression, True)


def allgather_async(tensor: torch.Tensor, name: str | None = None) -> Handle:
    """Starts the concatenation of every rank's `tensor` along dimension 0 (first dimensions may differ)."""
    _wire.check_tensor(tensor, "allgather_async", name)
    if not _wire.needs_bytes(tensor) or tensor.dim() == 0:
        return Handle(_engine.allgather_async(tensor, name))
    dtype = tensor.dtype
    return Handle(_engine.allgather_async(_wire.as_bytes(tensor, "allgather", name), name),
                  lambda out: out.view(dtype))


def allgather(tensor: torch.Tensor, name: str | None = None) -> torch.Tensor:
    _wire.check_tensor(tensor, "allgather", name)
    if _differentiable(tensor):
        return AllgatherFn.apply(tensor, name)
    return allgather_async(tensor, name).wait()


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> Handle:
    """Starts a broadcast of `root_rank`'s `tensor` into a new tensor on every rank."""
    _wire.check_tensor(tensor, "broadcast_async", name)
    if not _wire.needs_bytes(tensor):
        return Handle(_engine.broadcast_async(tensor, root_rank, name))
    dtype, shape = tensor.dtype, tensor.shape
    return Handle(_engine.broadcast_async(_wire.as_bytes(tensor, "broadcast", name), root_rank, name),
                  lambda out: out.view(dtype).reshape(shape))


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> Handle:
    """Starts an in-place broadcast: every rank's `tensor` receives `root_rank`'s values."""
    _wire.check_tensor(tensor, "broadcast_async_", name)
    if not _wire.needs_bytes(tensor):
        return Handle(_engine.broadcast_async_(tensor, root_rank, name))
    # The byte view shares tensor's memory, so the engine writes straight into it.
    return Handle(_engine.broadcast_async_(_wire.as_bytes(tensor, "broadcast_", name), root_rank, name),
                  lambda _out: tensor)


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> torch.Tensor:
    _wire.check_tensor(tensor, "broadcast", name)
    if _differentiable(tensor):
        return BroadcastFn.apply(tensor, root_rank, name)
    return broadcast_async(tensor, root_rank, name).wait()


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> torch.Tensor:
    _wire.check_tensor(tensor, "broadcast_", name)
    return broadcast_async_(tensor, root_rank, name).wait()


def synchronize(handle: Handle | _engine.Handle, timeout: float | None = None) -> Any:
    """Waits for an async operation and returns its result."""
    return handle.wait(timeout)


def poll(handle: Handle | _engine.Handle) -> bool:
    """True once the operation behind `handle` has completed (synchronize() will not block)."""
    return handle.done()


def join(device: int = -1, name: str = "join") -> int:
    """Blocks until every rank has joined; meanwhile this rank contributes zeros to the others' sum/average
    all-reduces and no rows to their allgathers. Returns the last rank to join, the same on every rank.
    `device` is accepted for Horovod compatibility and ignored (results are staged through the host)."""
    del device
    called_at = time.time()
    _engine.join(name)
    # The engine knows which ranks have joined, not in what order (idle ranks may all be seen in one
    # negotiation round). Each rank knows when it called: gather (time, rank) and take the latest; ties go to
    # the higher rank. Across nodes the order is as good as their clocks' synchronisation.
    stamps = _engine.allgather(np.array([[called_at, _engine.rank()]], dtype=np.float64), name=f"{name}.order")
    return int(max(map(tuple, stamps.tolist()))[1])


def barrier(name: str | None = None) -> None:
    """Returns once every rank has reached the barrier."""
    _engine.barrier(name)
