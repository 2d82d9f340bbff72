"""Horovod's PyTorch collectives (`allreduce`, `allgather`, `broadcast` and their async / in-place forms) on top
of the neptune_rt engine. Same names, arguments and defaults as `horovod.torch`: all-reduce averages unless
told otherwise, and `synchronize(handle)` returns the result. Tested by tests/torch/test_ops.py under mpirun.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from neptune_rt import engine as _engine
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


def allreduce_async(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                    op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                    compression: Compressor = Compression.none) -> Handle:
    """Starts an all-reduce of `tensor` into a new tensor; `tensor` is left unchanged."""
    op = resolve_op(op, average)
    compressed, ctx = compression.compress(tensor)
    if compressed is tensor:
        inner = _engine.allreduce_async(tensor, name, op, _codec(compression), prescale_factor, postscale_factor,
                                        _adaptive(compression))
    else:  # the compressor made a fresh tensor: reduce it in place, no second copy
        inner = _engine.allreduce_async_(compressed, name, op, _codec(compression), prescale_factor,
                                         postscale_factor, _adaptive(compression))
    return Handle(inner, lambda out: compression.decompress(out, ctx))


def allreduce_async_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
                     op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
                     compression: Compressor = Compression.none) -> Handle:
    """Starts an in-place all-reduce of `tensor`; the result is `tensor`."""
    op = resolve_op(op, average)
    compressed, ctx = compression.compress(tensor)
    inner = _engine.allreduce_async_(compressed, name, op, _codec(compression), prescale_factor, postscale_factor,
                                     _adaptive(compression))
    if compressed is tensor:
        return Handle(inner)

    def finish(out: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            tensor.copy_(compression.decompress(out, ctx))
        return tensor
    return Handle(inner, finish)


def allreduce(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
              compression: Compressor = Compression.none, op: str | None = None,
              prescale_factor: float = 1.0, postscale_factor: float = 1.0) -> torch.Tensor:
    """All-reduce (default: average over ranks) into a new tensor; differentiable, as Horovod's."""
    if _differentiable(tensor):
        op = resolve_op(op, average)
        compressed, ctx = compression.compress(tensor)
        if _codec(compression) != "none":
            raise ValueError(f"neptune_rt: a differentiable allreduce cannot use the engine codec "
                             f"{_codec(compression)!r}; detach the tensor or use Compression.fp16/bf16")
        out = AllreduceFn.apply(compressed, name, op, prescale_factor, postscale_factor)
        return compression.decompress(out, ctx)
    return allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor, compression).wait()


def allreduce_(tensor: torch.Tensor, average: bool | None = None, name: str | None = None,
               op: str | None = None, prescale_factor: float = 1.0, postscale_factor: float = 1.0,
               compression: Compressor = Compression.none) -> torch.Tensor:
    """In-place all-reduce (default: average over ranks); returns `tensor`."""
    return allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, compression).wait()


def allgather_async(tensor: torch.Tensor, name: str | None = None) -> Handle:
    """Starts the concatenation of every rank's `tensor` along dimension 0 (first dimensions may differ)."""
    return Handle(_engine.allgather_async(tensor, name))


def allgather(tensor: torch.Tensor, name: str | None = None) -> torch.Tensor:
    if _differentiable(tensor):
        return AllgatherFn.apply(tensor, name)
    return allgather_async(tensor, name).wait()


def broadcast_async(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> Handle:
    """Starts a broadcast of `root_rank`'s `tensor` into a new tensor on every rank."""
    return Handle(_engine.broadcast_async(tensor, root_rank, name))


def broadcast_async_(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> Handle:
    """Starts an in-place broadcast: every rank's `tensor` receives `root_rank`'s values."""
    return Handle(_engine.broadcast_async_(tensor, root_rank, name))


def broadcast(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> torch.Tensor:
    if _differentiable(tensor):
        return BroadcastFn.apply(tensor, root_rank, name)
    return broadcast_async(tensor, root_rank, name).wait()


def broadcast_(tensor: torch.Tensor, root_rank: int, name: str | None = None) -> torch.Tensor:
    return broadcast_async_(tensor, root_rank, name).wait()


def synchronize(handle: Handle | _engine.Handle, timeout: float | None = None) -> Any:
    """Waits for an async operation and returns its result."""
    return handle.wait(timeout)


def poll(handle: Handle | _engine.Handle) -> bool:
    """True once the operation behind `handle` has completed (synchronize() will not block)."""
    return handle.done()


def join(device: int = -1, name: str = "join") -> int:
    """Blocks until every rank has joined; meanwhile this rank contributes zeros to the others' sum/average
    all-reduces and no rows to their allgathers. Returns the last rank to join. `device` is accepted for
    Horovod compatibility and ignored (results are staged through the host)."""
    del device
    return _engine.join(name)


def barrier(name: str | None = None) -> None:
    """Returns once every rank has reached the barrier."""
    _engine.barrier(name)
