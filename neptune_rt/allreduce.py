"""Per-tensor all-reduces of the engine API: synchronous (`allreduce`, `allreduce_`: one native call whose caller
drives the cycle) and asynchronous (`allreduce_async`, `allreduce_async_`: a Handle). Plain numpy arrays go to the
engine as they are, contiguous CPU torch tensors by address, anything else through a host view (neptune_rt.buffers)
with its copy back. Re-exported by neptune_rt.engine; exercised by tests/test_engine.py and
tests/torch/workers/sync_worker.py.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from neptune_rt import engine as _eng
from neptune_rt.buffers import HostView, _is_torch, dtype_name, empty_like, host_view, plain_array
from neptune_rt.engine import OPS, Handle, _auto_name, _check_op, _require, _track, _written, codec_id
from neptune_rt.residuals import _warn_unnamed_compressed

__all__ = ["allreduce", "allreduce_", "allreduce_async", "allreduce_async_"]


def _checked_name(name: str | None, op: str, codec: str) -> tuple[str, bool]:
    """The tensor's name (auto-named when None) and whether it keeps error feedback (unnamed compressed tensors
    do not: warned once); an unknown op raises."""
    error_feedback = name is not None or codec == "none" or _warn_unnamed_compressed(codec)
    name = _auto_name("allreduce", name)
    _check_op(op, name)
    return name, error_feedback


def _host_views(tensor: Any, in_place: bool, name: str) -> tuple[HostView, Any, HostView]:
    """The input's host view, the result object and the result's host view (the input's own when in place)."""
    view = host_view(tensor, name, writable=in_place)
    if in_place:
        return view, tensor, view
    out = empty_like(tensor)
    return view, out, host_view(out, name, writable=True)


def _torch_by_address(tensor: Any) -> bool:
    """A CPU torch tensor the engine can take by address (data_ptr()): contiguous, not empty, and without the negative
    bit set (its memory would hold the values negated; host_view refuses it with the fix)."""
    return _is_torch(tensor) and tensor.is_cpu and tensor.is_contiguous() and tensor.numel() > 0 \
        and not tensor.is_neg()


def _address_args(tensor: Any, in_place: bool) -> tuple[Any, tuple]:
    """The result tensor and the (input, output, bytes, dtype, shape) arguments of the by-address entry points."""
    out = tensor if in_place else tensor.new_empty(tensor.shape)
    nbytes = tensor.numel() * tensor.element_size()
    return out, (tensor.data_ptr(), out.data_ptr(), nbytes, dtype_name(tensor), tuple(tensor.shape))


def _torch_short_args(tensor: Any, in_place: bool, dtype: str, name: str | None, op: str, prescale: float,
                      postscale: float) -> tuple[Any, tuple]:
    """The result tensor and the by-address entry points' arguments for the torch short path (no codec)."""
    out = tensor if in_place else tensor.new_empty(tensor.shape)
    return out, (_auto_name("allreduce", name), tensor.data_ptr(), out.data_ptr(), tensor.nbytes, dtype, tensor.shape,
                 op, 0, prescale, postscale, True)


def torch_allreduce_now(tensor: Any, in_place: bool, dtype: str, name: str | None, op: str, prescale: float,
                        postscale: float) -> Any:
    """neptune_rt.torch's synchronous all-reduce without a codec, its common case: the same call as allreduce_ (or
    allreduce) of (tensor, name, op, "none", ...) with fewer Python steps for a tensor the engine takes by address
    (`_torch_by_address`) of a float `dtype` (the engine's name for tensor.dtype); anything else goes the general
    way. `op` is already checked (neptune_rt.torch.ops.resolve_op). docs/design.md, "The torch layer's short path"."""
    if not _torch_by_address(tensor):
        return (allreduce_ if in_place else allreduce)(tensor, name, op, "none", prescale, postscale)
    engine = _require()
    out, args = _torch_short_args(tensor, in_place, dtype, name, op, prescale, postscale)
    native = engine._allreduce_now_at(*args)
    return out if native is None else _track(Handle(native, (tensor, out), None, out)).wait()


def torch_allreduce_async(tensor: Any, in_place: bool, dtype: str, name: str | None, op: str, prescale: float,
                          postscale: float) -> Handle:
    """torch_allreduce_now's asynchronous twin (neptune_rt.torch's allreduce_async_ / allreduce_async without a
    codec): enqueued by address; anything else goes the general way (allreduce_async_ / allreduce_async)."""
    if not _torch_by_address(tensor):
        return (allreduce_async_ if in_place else allreduce_async)(tensor, name, op, "none", prescale, postscale)
    engine = _require()
    out, args = _torch_short_args(tensor, in_place, dtype, name, op, prescale, postscale)
    return _track(Handle(engine._enqueue_allreduce_at(*args), (tensor, out), None, out))


def _enqueue_allreduce(tensor: Any, in_place: bool, name: str | None, op: str, codec: str, prescale: float,
                       postscale: float, adaptive: bool, hand_over: bool) -> Handle:
    engine = _require()
    name, error_feedback = _checked_name(name, op, codec)
    if in_place:
        dtype = plain_array(tensor, True)
        if dtype is not None:  # a plain numpy array: no view, no copy-back (the common case, kept cheap)
            native = engine.enqueue_allreduce(name, tensor, tensor, dtype, tensor.shape, op,
                                              codec_id(codec, adaptive), prescale, postscale, error_feedback,
                                              hand_over)
            return _track(Handle(native, (tensor,), None, tensor))
    if _torch_by_address(tensor):
        # By address, as the synchronous path: no numpy view made per call (4 KB allreduce_async_ + wait of a CPU
        # tensor, 1 rank: 23 us through a host view; docs/design.md, "Synchronous calls").
        out, where = _address_args(tensor, in_place)
        native = engine._enqueue_allreduce_at(name, *where, op, codec_id(codec, adaptive), prescale, postscale,
                                              error_feedback, hand_over)
        return _track(Handle(native, (tensor, out), None, out))
    view, out, out_view = _host_views(tensor, in_place, name)
    native = engine.enqueue_allreduce(name, view.array, out_view.array, view.dtype, list(view.shape), op,
                                      codec_id(codec, adaptive), prescale, postscale, error_feedback, hand_over)
    return _track(Handle(native, (tensor, view, out, out_view), _written(out, out_view)))


def allreduce_async_(tensor: Any, name: str | None = None, op: str = "sum", codec: str = "none",
                     prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True, *,
                     hand_over: bool = False) -> Handle:
    """In-place all-reduce of `tensor`; the handle's result is `tensor`. hand_over=True: nobody will drive it (you
    wait with wait(drive=False) or through add_done_callback, as DistributedOptimizer and the DDP hook do): the
    engine thread is woken once and starts it at once, instead of leaving it to a waiting caller for
    NEPTUNE_RT_DRIVE_WINDOW_US."""
    return _enqueue_allreduce(tensor, True, name, op, codec, prescale, postscale, adaptive, hand_over)


def allreduce_async(tensor: Any, name: str | None = None, op: str = "sum", codec: str = "none",
                    prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True, *,
                    hand_over: bool = False) -> Handle:
    """All-reduce into a new object of the input's type; `tensor` is left unchanged (hand_over: as
    allreduce_async_)."""
    return _enqueue_allreduce(tensor, False, name, op, codec, prescale, postscale, adaptive, hand_over)


def _allreduce_now(tensor: np.ndarray, out: np.ndarray, dtype: str, name: str | None, op: str, codec: str,
                   prescale: float, postscale: float, adaptive: bool) -> np.ndarray:
    # Plain numpy arrays: one native call enqueues and drives the cycle on this thread, without waking the engine
    # thread (on shared cores that wake-up preempts a peer rank and costs more than a small all-reduce). Kept to
    # the checks the native side cannot make: a 4 KB all-reduce costs 6.5-8.5 us on one rank, and each Python step
    # here is 0.1-0.3 us of it (a stopped engine is refused by the native enqueue, with its failure as the message).
    engine = _eng._engine
    if engine is None:
        _require()
    if type(name) is str and name:
        error_feedback = True
    else:
        error_feedback = name is not None or codec == "none" or _warn_unnamed_compressed(codec)
        name = _auto_name("allreduce", name)  # raises for a name that is not a non-empty string
    if op not in OPS:
        _check_op(op, name)
    codec_ident = 0 if codec == "none" else codec_id(codec, adaptive)  # "none" is 0 on the wire (format.h)
    native = engine.allreduce_now(name, tensor, out, dtype, tensor.shape, op, codec_ident, prescale, postscale,
                                  error_feedback)
    if native is None:
        return out
    # Not completed (or failed): tracked like any handle, so the buffers stay referenced while the engine may use
    # them; wait() untracks it on success, a failed one keeps them for good (see Handle.wait).
    return _track(Handle(native, (tensor, out), None, out)).wait()


def _allreduce_viewed(tensor: Any, in_place: bool, name: str | None, op: str, codec: str, prescale: float,
                      postscale: float, adaptive: bool) -> Any:
    # Any other buffer: a contiguous CPU torch tensor by address, anything else host_view accepts (torch GPU or cupy
    # tensors, ndarray subclasses, other buffer objects, a read-only array reduced out of place) through a host
    # view, then the copy back where the view staged the data; what host_view refuses is refused as before. Not
    # allreduce_async + wait: the asynchronous submission wakes the engine thread (4 KB torch allreduce_, 2 ranks a
    # core each: 148-178 us that way against 24.7-31.0 by address, docs/design.md "Synchronous calls").
    engine = _require()
    name, error_feedback = _checked_name(name, op, codec)
    if _torch_by_address(tensor):
        # Its memory by address: no numpy array made and freed per call (about 5 us of a 4 KB call's 17, 1 rank).
        out, where = _address_args(tensor, in_place)
        native = engine._allreduce_now_at(name, *where, op, codec_id(codec, adaptive), prescale, postscale,
                                          error_feedback)
        return out if native is None else _track(Handle(native, (tensor, out), None, out)).wait()
    view, out, out_view = _host_views(tensor, in_place, name)
    native = engine.allreduce_now(name, view.array, out_view.array, view.dtype, view.shape, op,
                                  codec_id(codec, adaptive), prescale, postscale, error_feedback)
    finalize = _written(out, out_view)
    if native is None:
        return finalize()
    return _track(Handle(native, (tensor, view, out, out_view), finalize)).wait()  # as in _allreduce_now


def allreduce(tensor: Any, name: str | None = None, op: str = "sum", codec: str = "none",
              prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> Any:
    """All-reduce into a new object of the input's type. codec: "none" (dense), "fp16", "bf16", "int8",
    "int4", "onebit" (error feedback kept per tensor name), "auto" or "auto_lowbit"; with adaptive=True the
    cost model may still choose the dense path (or fp16) for this bucket where it predicts that to be faster."""
    dtype = plain_array(tensor, False)
    if dtype is not None:
        return _allreduce_now(tensor, np.empty_like(tensor), dtype, name, op, codec, prescale, postscale, adaptive)
    return _allreduce_viewed(tensor, False, name, op, codec, prescale, postscale, adaptive)


def allreduce_(tensor: Any, name: str | None = None, op: str = "sum", codec: str = "none",
               prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> Any:
    """In-place all-reduce of `tensor`, returned when done (the synchronous allreduce_async_)."""
    dtype = plain_array(tensor, True)
    if dtype is not None:
        return _allreduce_now(tensor, tensor, dtype, name, op, codec, prescale, postscale, adaptive)
    return _allreduce_viewed(tensor, True, name, op, codec, prescale, postscale, adaptive)
