"""The engine's collectives besides all-reduce: allgather (first dimensions may differ), broadcast from any root,
a named barrier, and join (uneven inputs: a joined rank contributes zeros). Each has an async form returning a
Handle and a blocking form. Re-exported by neptune_rt.engine; exercised by tests/test_engine.py.
"""
from __future__ import annotations

from typing import Any

from neptune_rt.buffers import empty_like, from_bytes, host_view
from neptune_rt.engine import Handle, _auto_name, _require, _track, _written

__all__ = ["allgather", "allgather_async", "barrier", "broadcast", "broadcast_", "broadcast_async",
           "broadcast_async_", "join"]


def allgather_async(tensor: Any, name: str | None = None) -> Handle:
    """Concatenation of every rank's `tensor` along dimension 0 (first dimensions may differ)."""
    engine = _require()
    name = _auto_name("allgather", name)
    if len(getattr(tensor, "shape", ())) == 0:
        raise ValueError(f"tensor '{name}': allgather needs at least one dimension (reshape scalars to [1])")
    view = host_view(tensor, name, writable=False)
    native = engine.enqueue_allgather(name, view.array, view.dtype, list(view.shape))

    def finalize() -> Any:
        return from_bytes(tensor, native.take_output(), tuple(native.output_shape))
    return _track(Handle(native, (tensor, view), finalize))


def allgather(tensor: Any, name: str | None = None) -> Any:
    return allgather_async(tensor, name).wait()


def broadcast_async_(tensor: Any, root: int = 0, name: str | None = None) -> Handle:
    engine = _require()
    name = _auto_name("broadcast", name)
    view = host_view(tensor, name, writable=True)
    native = engine.enqueue_broadcast(name, view.array, view.array, view.dtype, list(view.shape), root)
    return _track(Handle(native, (tensor, view), _written(tensor, view)))


def broadcast_async(tensor: Any, root: int = 0, name: str | None = None) -> Handle:
    engine = _require()
    name = _auto_name("broadcast", name)
    view = host_view(tensor, name, writable=False)
    out = empty_like(tensor)
    out_view = host_view(out, name, writable=True)
    native = engine.enqueue_broadcast(name, view.array, out_view.array, view.dtype, list(view.shape), root)
    return _track(Handle(native, (tensor, view, out, out_view), _written(out, out_view)))


def broadcast(tensor: Any, root: int = 0, name: str | None = None) -> Any:
    return broadcast_async(tensor, root, name).wait()


def broadcast_(tensor: Any, root: int = 0, name: str | None = None) -> Any:
    return broadcast_async_(tensor, root, name).wait()


def barrier(name: str | None = None, timeout: float | None = None) -> None:
    """Returns once every rank has reached a barrier of the same name."""
    engine = _require()
    Handle(engine.enqueue_barrier(_auto_name("barrier", name)), (), lambda: None).wait(timeout)


def join(name: str = "join") -> int:
    """Blocks until every rank has called join; meanwhile this rank takes part in the others' all-reduces
    (sum/average) with zeros and in their allgathers with no rows. Returns the highest rank among those that
    joined in the last negotiation cycle (the engine does not know the order within a cycle);
    neptune_rt.torch.join() returns the last rank to join, as Horovod does."""
    native = _require().enqueue_join(name)
    Handle(native, (), lambda: None).wait()
    return int(native.value)
