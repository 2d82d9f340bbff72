"""Grouped all-reduces (Horovod's grouped_allreduce): several tensors of one dtype that travel as one engine
bucket, in the given order, once all are ready on every rank. The bucket then depends only on what was
submitted, never on arrival timing, so compressed results are bit-reproducible given the seed (the DDP hook
submits each DDP bucket this way). A submission is one native call and returns one GroupHandle, whose wait()
covers every member; per-tensor Handles are made only when asked for (indexing, iteration). Re-exported by
neptune_rt.engine; exercised by tests/test_engine_stats.py and tests/test_engine_groups.py.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Callable

from neptune_rt import engine as _eng
import numpy as np

from neptune_rt.buffers import _DTYPE_NAMES, empty_like, host_view, plain_array
from neptune_rt.engine import Handle, _auto_name, _check_op, _require, _track, codec_id

__all__ = ["GroupHandle", "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async",
           "grouped_allreduce_async_"]


class GroupHandle(Sequence):
    """The members of one grouped all-reduce, in submission order. `wait()` waits for all of them (one native
    wait: they complete together) and returns the list of results; `group[i]` (or iterating) gives member i's
    own Handle, with its own wait(), done() and callbacks."""

    def __init__(self, native: Any, names: list[str], keep: tuple, results: list,
                 write_backs: list[Callable[[], None] | None] | None):
        self._native = native  # _C.HandleGroup
        self._names = names
        self._keep = keep  # buffers the engine reads/writes: alive until completion
        self._results = results
        self._write_backs = write_backs  # per member: copies a staged result back (device tensors), or None
        self._members: list[Handle | None] | None = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._results)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self._results)
        if not -n <= index < n:
            raise IndexError(f"group of {n} tensors has no member {index}")
        index %= n
        with self._lock:
            if self._members is None:
                self._members = [None] * n
            member = self._members[index]
            if member is None:
                # The member keeps the whole group (and so every buffer) alive until it is waited on.
                member = Handle(self._native[index], (self,), lambda i=index: self._finish(i))
                self._members[index] = member
        return member

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def done(self) -> bool:
        return self._native.done()

    def _failed(self) -> bool:
        return self._native.first_error() >= 0

    def _finish(self, index: int) -> Any:
        if self._write_backs is not None:
            write_back, self._write_backs[index] = self._write_backs[index], None
            if write_back is not None:
                write_back()
        return self._results[index]

    def wait(self, timeout: float | None = None, drive: bool = True) -> list:
        """The results of every member, in order; TimeoutError if not all are done after `timeout` s,
        RuntimeError (or TimeoutError) with the first failed member's error. drive=False: as Handle.wait."""
        engine = _eng._engine
        limit = 0.0 if timeout is None else max(timeout, 1e-6)
        if drive and engine is not None and engine.running:
            done = engine.wait_group(self._native, limit)
        else:
            done = _eng._wait_passive(self._native, timeout)
        if not done:
            where = f"rank {engine.rank}: " if engine is not None else ""
            raise TimeoutError(f"neptune_rt: {where}group of {len(self)} tensors ('{self._names[0]}', ...) not "
                               f"complete after {timeout} s")
        failed = self._native.first_error()
        if failed >= 0:
            # A failed group keeps its buffers (tracked in _inflight) for good (see Handle.wait).
            member = self._native[failed]
            raise (TimeoutError if member.timed_out else RuntimeError)(member.error)
        with _eng._inflight_lock:
            _eng._inflight.pop(id(self), None)
        if self._write_backs is not None:
            for i in range(len(self)):
                self._finish(i)
        return list(self._results)

    def add_done_callback(self, fn: Callable[["GroupHandle"], None]) -> None:
        """Calls fn(group) once every member is done, on the engine's completion thread (at once if all are).
        One native callback, on the last member (HandleGroup::addCallback): a Python callback per member cost ~4 us
        per tensor."""
        self._native.add_callback(lambda: fn(self))
        _eng._leave_to_engine_thread()


def _plain_group(tensors: list) -> bool:
    """True when every tensor is a numpy array (not a subclass) of one dtype object the engine knows: the group's
    fast path: one identity check per tensor instead of a dtype lookup and list appends."""
    first = tensors[0]
    if type(first) is not np.ndarray or first.dtype not in _DTYPE_NAMES:
        return False
    ndarray, dtype = np.ndarray, first.dtype
    for tensor in tensors:
        if type(tensor) is not ndarray or tensor.dtype is not dtype:
            return False
    return True


def _enqueue_group(tensors: list, in_place: bool, names: list[str] | None, op: str, codec: str,
                   prescale: float, postscale: float, adaptive: bool, caller_waits: bool,
                   hand_over: bool = False) -> GroupHandle:
    engine = _require()
    tensors = list(tensors)
    if not tensors:
        raise ValueError("grouped all-reduce of no tensors")
    if names is None:
        names = [_auto_name("allreduce", None) for _ in tensors]
    elif not all(type(n) is str and n for n in names):
        names = [_auto_name("allreduce", n) for n in names]  # raises, naming the bad one
    else:
        names = list(names)
    if len(names) != len(tensors):
        raise ValueError(f"grouped all-reduce: {len(tensors)} tensors but {len(names)} names")
    _check_op(op, names[0])
    if in_place and _plain_group(tensors):
        # Numpy arrays of one known dtype (views of a flat buffer, say): reduced where they lie, no per-tensor work
        # here (the extension checks that each is contiguous and writable, naming the tensor).
        native = engine.enqueue_group_allreduce(names, tensors, None, _DTYPE_NAMES[tensors[0].dtype], None, op,
                                                codec_id(codec, adaptive), prescale, postscale, caller_waits, hand_over)
        return _track(GroupHandle(native, names, (tensors,), tensors, None))
    arrays, dtypes = [], set()
    out_arrays: list | None = None if in_place else []
    results = tensors if in_place else []
    write_backs: list | None = None
    ndarray, known = np.ndarray, _DTYPE_NAMES
    for i, tensor in enumerate(tensors):
        if in_place and type(tensor) is ndarray:
            dtype = known.get(tensor.dtype) or plain_array(tensor, True)
            if dtype is not None:
                # A numpy array of a known dtype, reduced where it lies. The extension checks that it is
                # contiguous and writable, naming the tensor (a per-tensor flags check here costs more).
                arrays.append(tensor)
                dtypes.add(dtype)
                continue
        view = host_view(tensor, names[i], writable=in_place)
        arrays.append(view.array)
        dtypes.add(view.dtype)
        if in_place:
            out_view = view
        else:
            out = empty_like(tensor)
            out_view = host_view(out, names[i], writable=True)
            results.append(out)
            out_arrays.append(out_view.array)
        if out_view.write_back is not None:
            if write_backs is None:
                write_backs = [None] * len(tensors)
            write_backs[i] = (lambda wb=out_view.write_back, a=out_view.array: wb(a))
    if len(dtypes) != 1:
        raise ValueError(f"grouped all-reduce of {names[0]!r}...: the tensors must share one dtype, got "
                         f"{sorted(dtypes)}")
    native = engine.enqueue_group_allreduce(names, arrays, out_arrays, dtypes.pop(), None, op,
                                            codec_id(codec, adaptive), prescale, postscale, caller_waits, hand_over)
    return _track(GroupHandle(native, names, (tensors, arrays, out_arrays), list(results), write_backs))


def grouped_allreduce_async_(tensors: list, names: list[str] | None = None, op: str = "sum",
                             codec: str = "none", prescale: float = 1.0, postscale: float = 1.0,
                             adaptive: bool = True, *, hand_over: bool = False) -> GroupHandle:
    """In-place all-reduce of several tensors of one dtype that travel as one bucket, in this order, once all
    are ready on every rank. Fusion then depends only on what was submitted, never on timing, so compressed
    results are bit-reproducible given the seed. Returns a GroupHandle: wait() for all, or a Handle per tensor
    by indexing or iterating. hand_over=True: nobody will drive it (you wait with wait(drive=False) or through
    add_done_callback, as DistributedOptimizer and the DDP hook do): the engine thread is woken once and starts it at
    once, instead of leaving it to a waiting caller for NEPTUNE_RT_DRIVE_WINDOW_US."""
    return _enqueue_group(tensors, True, names, op, codec, prescale, postscale, adaptive, False, hand_over)


def grouped_allreduce_async(tensors: list, names: list[str] | None = None, op: str = "sum",
                            codec: str = "none", prescale: float = 1.0, postscale: float = 1.0,
                            adaptive: bool = True, *, hand_over: bool = False) -> GroupHandle:
    """As grouped_allreduce_async_, into new objects; the inputs stay unchanged."""
    return _enqueue_group(tensors, False, names, op, codec, prescale, postscale, adaptive, False, hand_over)


def grouped_allreduce(tensors: list, names: list[str] | None = None, op: str = "sum", codec: str = "none",
                      prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> list:
    """As grouped_allreduce_async(...).wait(), driven on this thread from the start (see grouped_allreduce_)."""
    return _enqueue_group(tensors, False, names, op, codec, prescale, postscale, adaptive, True).wait()


def grouped_allreduce_(tensors: list, names: list[str] | None = None, op: str = "sum", codec: str = "none",
                       prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> list:
    """As grouped_allreduce_async_(...).wait(), but the submission does not wake the engine thread: this thread
    drives the cycles itself from the start. With async + wait, the woken engine thread takes the cycle whenever the
    caller needs longer than NEPTUNE_RT_DRIVE_WINDOW_US to come back from the submission to its wait, and that
    hand-off cost about 1 ms a step of 200 tensors on 2 ranks (docs/design.md, "Drive window and synchronous
    groups")."""
    return _enqueue_group(tensors, True, names, op, codec, prescale, postscale, adaptive, True).wait()
