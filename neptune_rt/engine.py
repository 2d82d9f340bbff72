"""The Python face of the C++ background engine: init/shutdown, rank queries, and the collective operations
on numpy arrays, torch tensors, cupy arrays or any contiguous buffer. Launch with mpirun; exercised by
tests/test_engine.py.

Every operation has a name. Ranks must submit the same names (with the same shape, dtype and op); they may
do so in any order and from any thread. Unnamed operations get `<op>.<n>` names, which match across ranks
as long as every rank issues its unnamed operations in the same order.
"""
from __future__ import annotations

import atexit
import itertools
import sys
import threading
from typing import Any, Callable


from neptune_rt import _env
from neptune_rt.buffers import HostView

__all__ = [
    "init", "shutdown", "is_initialized", "rank", "size", "local_rank", "local_size", "comm",
    "allreduce", "allreduce_", "allreduce_async", "allreduce_async_", "allgather", "allgather_async",
    "broadcast", "broadcast_", "broadcast_async", "broadcast_async_", "barrier", "join",
    "synchronize", "poll", "Handle", "OPS", "CODECS", "codec_id", "cost_model",
    "grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_", "GroupHandle",
    "stats", "bucket_records",
    "export_residuals", "import_residuals", "release",
]

OPS = ("sum", "average", "min", "max")


def _engine_codecs() -> tuple[str, ...]:
    """The codecs this build's engine applies per bucket: the extension's codec table ("none" = dense) plus
    "auto" (the cost model picks dense, fp16 or int8) and "auto_lowbit" (dense, fp16, int8, int4 or onebit: for
    callers that compress a momentum-corrected update, as the PyTorch binding's local momentum does).
    Kernels and numpy references: neptune_rt.codecs."""
    from neptune_rt import _C
    return (*_C.codec_names(), "auto", "auto_lowbit")


CODECS: tuple[str, ...] = _engine_codecs()

_state_lock = threading.Lock()
_engine = None
_comm = None
_local_rank = 0
_local_size = 1
_counters: dict[str, itertools.count] = {}
_inflight: dict[int, "Handle"] = {}
_inflight_lock = threading.Lock()  # handles are submitted and waited on from several threads
_sweep_at = 64  # _track sweeps completed handles out of _inflight when it grows past this
_failed_exit = False
_failure: str | None = None  # the first engine failure (set-up, communication, shut-down) of this process


_CODEC_IDS: dict[str, int] = {}


def codec_id(codec: str, adaptive: bool = True) -> int:
    """Wire id of a codec name; ValueError naming the choices. adaptive=False: use exactly this codec
    even where the cost model predicts the dense path to be faster."""
    if not _CODEC_IDS:
        from neptune_rt import _C
        ids = {name: i for i, name in enumerate(_C.codec_names()) if name in CODECS}
        _CODEC_IDS.update(ids, auto=_C.CODEC_AUTO_ID, auto_lowbit=_C.CODEC_AUTO_LOWBIT_ID,
                          _force=_C.CODEC_FORCE_BIT)
    ident = _CODEC_IDS.get(codec) if codec in CODECS else None
    if ident is None:
        raise ValueError(f"unknown codec {codec!r} (available: {', '.join(CODECS)})")
    return ident if adaptive or codec == "none" else ident | _CODEC_IDS["_force"]


def init(comm: Any = None) -> None:
    """Starts the engine over `comm` (an mpi4py communicator; default COMM_WORLD). Idempotent. Collective:
    every rank of `comm` calls it; TimeoutError after NEPTUNE_RT_TIMEOUT_SECONDS if some rank does not
    (docs/failures.md). Refused at once after an earlier engine of this process failed (shut down or not)."""
    global _engine, _comm, _local_rank, _local_size
    with _state_lock:
        if _engine is not None and _engine.running:
            if comm is not None and comm is not _comm:
                raise RuntimeError("neptune_rt is already initialized on another communicator; "
                                   "call shutdown() first")
            return
        if _engine is not None:  # set but not running: it failed, and no shutdown() has been called since
            _record_failure(_engine.fatal_error or "the engine stopped")
        if _failure is not None:
            raise RuntimeError(
                f"neptune_rt: init() refused: an earlier engine of this process failed, and its ranks are out "
                f"of step for good (requests it left posted may still be pending). Let this process exit; the "
                f"exit handler aborts the MPI job; restart the job to recover. The failure was:\n{_failure}")
        from mpi4py import MPI
        from neptune_rt import _C
        level = MPI.Query_thread()
        if level < MPI.THREAD_MULTIPLE:
            raise RuntimeError(
                f"neptune_rt needs MPI_THREAD_MULTIPLE (its engine thread communicates while Python runs), "
                f"but MPI was initialized with thread level {level}. Do not lower mpi4py.rc.thread_level, "
                f"and use an MPI library built with thread support.")
        comm = MPI.COMM_WORLD if comm is None else comm
        algorithm = _env.get("NEPTUNE_RT_COMPRESSED_ALGORITHM")
        if algorithm == "auto":
            algorithm = _C.choose_compressed_algorithm(comm.Get_size())
        _install_exit_handlers()  # before set-up: a set-up that times out must abort the job at exit
        try:
            # Set-up (duplicating `comm`, finding the ranks of each node) is collective, with a deadline.
            _engine = _C.Engine(
                comm,
                fusion_bytes=_env.get("NEPTUNE_RT_FUSION_BYTES"),
                eager_bytes=_env.get("NEPTUNE_RT_EAGER_BYTES"),
                cycle_ms=_env.get("NEPTUNE_RT_CYCLE_TIME_MS"),
                timeout=_env.get("NEPTUNE_RT_TIMEOUT_SECONDS"),
                stall_warning=_env.get("NEPTUNE_RT_STALL_WARNING_SECONDS"),
                segment_bytes=_env.get("NEPTUNE_RT_SEGMENT_BYTES"),
                codec_block=_env.get("NEPTUNE_RT_CODEC_BLOCK"),
                rounding=_env.get("NEPTUNE_RT_ROUNDING"),
                seed=_env.get("NEPTUNE_RT_SEED"),
                compressed_algorithm=algorithm,
                cost_model=_env.get("NEPTUNE_RT_COST_MODEL"),
                deterministic=_env.get("NEPTUNE_RT_DETERMINISTIC"),
                cache_capacity=_env.get("NEPTUNE_RT_CACHE_CAPACITY"),
                native_allreduce_bytes=_env.get("NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES"),
                allreduce_algorithm=_env.get("NEPTUNE_RT_ALLREDUCE_ALGORITHM"),
                drive_window_us=_env.get("NEPTUNE_RT_DRIVE_WINDOW_US"),
            )
        except TimeoutError as err:
            _record_failure(str(err))
            raise
        _comm = comm
        _local_rank, _local_size = _engine.local_rank, _engine.local_size
        _counters.clear()


def shutdown() -> None:
    """Collective: every rank calls it. Finishes negotiated work and stops the engine thread. TimeoutError
    when the other ranks do not shut down within NEPTUNE_RT_TIMEOUT_SECONDS; after an engine failure it
    returns at once (the failure was raised already) and init() is refused from then on."""
    global _engine
    with _state_lock:
        engine, _engine = _engine, None
    if engine is None:
        return
    failed_before = None if engine.running else (engine.fatal_error or "the engine stopped")
    try:
        engine.shutdown()
    except Exception as err:
        _record_failure(str(err))
        raise
    finally:
        if failed_before is not None:
            _record_failure(failed_before)
        if _failure is None:
            with _inflight_lock:
                _inflight.clear()
        # else: handles keep the user buffers that requests left posted may still touch (never freed)


def _record_failure(error: str) -> None:
    """The first failure of this process: refuses init() from now on and makes the exit abort the job."""
    global _failure
    if _failure is None:
        _failure = error


def is_initialized() -> bool:
    return _engine is not None and _engine.running


def _require() -> Any:
    engine = _engine
    if engine is None:
        raise RuntimeError("neptune_rt is not initialized: call neptune_rt.init() first")
    if not engine.running:
        raise RuntimeError(engine.fatal_error or "neptune_rt engine has stopped")
    return engine


def cost_model() -> str:
    """The probed link/codec cost model ("" until the first compressed bucket ran)."""
    return _require().cost_model


def stats() -> dict:
    """Cumulative counters since init, read without synchronisation: buckets, tensors, bytes_raw
    (uncompressed bytes all-reduced), bytes_wire (bytes this rank sent), bytes_encoded (the buckets' size as the
    codec that ran encoded them, one copy: bytes_raw for dense buckets, so bytes_raw / bytes_encoded is the
    compression the codecs gave, whatever the algorithm and world size), negotiate_s, encode_s, wire_s, decode_s,
    wait_s (seconds), codecs ({codec that ran: buckets}; with the cost model on, a compressed bucket may run as
    "none"), codec_bytes ({codec that ran: bytes_raw}). Eager all-reduces count as buckets of one; a dense
    bucket's encode/decode are its packing and unpacking. Also the cycle profile and response-cache counters
    (docs/design.md)."""
    return _require().stats()


def bucket_records(clear: bool = True) -> list[dict]:
    """Per-bucket records, oldest first, of the last BUCKET_RECORDS_KEPT (4096) buckets: start (seconds on
    time.monotonic()'s clock), codec, tensors, bytes_raw, bytes_wire, bytes_encoded, encode_s, wire_s, decode_s, and
    for dense buckets algorithm ("eager", "recursive_doubling", "halving_doubling", "ring" or "mpi",
    MPI_Iallreduce), and packed (members copied into the engine's fusion or fp32 work buffer rather than worked on
    where they lie). clear=True empties the ring, so successive calls return disjoint records."""
    return _require().bucket_records(clear)


def rank() -> int:
    return _require().rank


def size() -> int:
    return _require().size


def local_rank() -> int:
    _require()
    return _local_rank


def local_size() -> int:
    _require()
    return _local_size


def comm() -> Any:
    """The mpi4py communicator the engine runs over."""
    _require()
    return _comm


class Handle:
    """An operation in flight. `wait()` returns its result; `done()` polls; callbacks run on completion."""
    __slots__ = ("_native", "_keep", "_finalize", "_result", "_finalized", "__weakref__")

    def __init__(self, native: Any, keep: tuple, finalize: Callable[[], Any] | None, result: Any = None):
        self._native = native
        self._keep = keep  # buffers the engine reads/writes: alive until completion
        self._finalize = finalize  # None: `result` is the result as it is (an in-place host buffer)
        self._result = result
        self._finalized = finalize is None

    @property
    def name(self) -> str:
        return self._native.name

    def done(self) -> bool:
        return self._native.done()

    def _failed(self) -> bool:
        return bool(self._native.error)

    @property
    def codec_used(self) -> str:
        """For all-reduces: the codec that moved the data ("none" = dense), once done."""
        return self._native.codec_used

    @property
    def wire_bytes(self) -> int:
        """For all-reduces: payload bytes this rank sent, once done."""
        return self._native.wire_bytes

    def wait(self, timeout: float | None = None, drive: bool = True) -> Any:
        """Result of the operation; TimeoutError if not done after `timeout` s, RuntimeError if it failed.
        drive=False: sleep until done instead of running the engine's cycles on this thread while the engine
        thread is idle (for a thread that shares its core with the engine thread, which then does the work)."""
        engine = _engine
        limit = 0.0 if timeout is None else max(timeout, 1e-6)
        done = engine.wait(self._native, limit) if drive and engine is not None and engine.running \
            else _wait_passive(self._native, timeout)
        if not done:
            where = f"rank {_engine.rank}: " if _engine is not None else ""
            raise TimeoutError(f"neptune_rt: {where}'{self.name}' not complete after {timeout} s")
        error = self._native.error
        if error:
            # A failed handle keeps its buffers (tracked in _inflight) for good: if the engine's
            # communication failed, requests left posted may still touch them (docs/failures.md).
            raise (TimeoutError if self._native.timed_out else RuntimeError)(error)
        with _inflight_lock:
            _inflight.pop(id(self), None)
        if not self._finalized:
            self._result = self._finalize()
            self._finalized = True
        self._keep = ()
        return self._result

    def add_done_callback(self, fn: Callable[["Handle"], None]) -> None:
        """Calls fn(handle) when done: on the engine's completion thread, in completion order (at once on this
        thread if already done). Never under the engine's locks: fn may wait on other handles, and slow work
        there delays later callbacks, not communication. fn must not call shutdown() (RuntimeError)."""
        self._native.add_callback(lambda: fn(self))
        _leave_to_engine_thread()


def _leave_to_engine_thread() -> None:
    """What was submitted so far will not be driven by a waiting caller (a passive wait, a completion callback,
    DistributedOptimizer's buckets): the engine thread takes it now, even in caller-driven mode (docs/design.md)."""
    if _engine is not None:
        _engine._leave_to_engine()


def _wait_passive(native: Any, timeout: float | None) -> bool:
    """A native handle's (or group's) wait without driving the engine. Without a timeout it waits in slices, so
    that Ctrl-C reaches Python within half a second even while the engine waits out its own timeout."""
    _leave_to_engine_thread()
    if timeout is not None:
        return native.wait(max(timeout, 1e-6))
    while not native.wait(0.5):
        pass
    return True


def _track(handle: Any) -> Any:
    # Handles the caller drops must still keep their buffers alive: hold them until they are done.
    # Dropped handles that completed are swept out once the table has doubled since the last sweep: amortized
    # O(1) per submission (a sweep at every submission made a 200-tensor step quadratic). Group handles
    # (neptune_rt.grouped) are tracked as one.
    global _sweep_at
    with _inflight_lock:
        if len(_inflight) > _sweep_at:  # failed handles stay: their buffers may still be in use (see Handle.wait)
            for key in [k for k, h in _inflight.items() if h.done() and not h._failed()]:
                del _inflight[key]
            _sweep_at = max(64, 2 * len(_inflight))
        _inflight[id(handle)] = handle
    return handle


def _auto_name(kind: str, name: str | None) -> str:
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor name must be a non-empty string, got {name!r}")
        return name
    return f"{kind}.{next(_counters.setdefault(kind, itertools.count()))}"


def _check_op(op: str, name: str) -> str:
    if op not in OPS:
        raise ValueError(f"tensor '{name}': unknown op {op!r} (use one of {', '.join(OPS)})")
    return op


def _written(out: Any, view: HostView) -> Callable[[], Any]:
    def finalize() -> Any:
        if view.write_back is not None:
            view.write_back(view.array)
        return out
    return finalize


def synchronize(handle: Handle, timeout: float | None = None) -> Any:
    """Waits for `handle` and returns its result (Horovod's name for Handle.wait)."""
    return handle.wait(timeout)


def poll(handle: Handle) -> bool:
    return handle.done()


def _install_exit_handlers() -> None:
    """At exit: shut down collectively after a clean run; after an uncaught exception while the engine runs,
    or after any engine failure in this process (set-up, communication or shut-down), abort the MPI job:
    the ranks are out of step, and MPI_Finalize would wait for peers that will never come."""
    if getattr(_install_exit_handlers, "done", False):
        return
    _install_exit_handlers.done = True
    previous_hook = sys.excepthook

    def excepthook(kind, value, tb):
        global _failed_exit
        _failed_exit = True
        previous_hook(kind, value, tb)
    sys.excepthook = excepthook

    def at_exit() -> None:
        engine = _engine
        if engine is not None and (_failed_exit or not engine.running):
            _record_failure(engine.fatal_error or "uncaught exception while neptune_rt was running")
        elif engine is not None:
            try:
                shutdown()
            except Exception as err:  # a peer never shut down: recorded by shutdown()
                print(f"neptune_rt: exit handler: {err}", file=sys.stderr)
        if _failure is not None:
            from neptune_rt import _C
            print(f"neptune_rt: rank {_comm_rank()}: aborting the MPI job at exit after an earlier failure "
                  f"(see docs/failures.md)", file=sys.stderr)
            sys.stderr.flush()
            sys.stdout.flush()
            _C.abort_mpi(1)
    atexit.register(at_exit)


def _comm_rank() -> int:
    try:
        from mpi4py import MPI
        return MPI.COMM_WORLD.Get_rank()
    except Exception:  # noqa: BLE001 - only for a message
        return -1


# Per-tensor all-reduces (synchronous and asynchronous) live in their own module; they are part of this API.
from neptune_rt.allreduce import allreduce, allreduce_, allreduce_async, allreduce_async_  # noqa: E402
# Allgather, broadcast, barrier and join live in their own module; they are part of this API.
from neptune_rt.gather_broadcast import (  # noqa: E402
    allgather, allgather_async, barrier, broadcast, broadcast_, broadcast_async, broadcast_async_, join,
)
# Grouped all-reduces live in their own module (deterministic fusion); they are part of this API.
from neptune_rt.grouped import (  # noqa: E402
    GroupHandle, grouped_allreduce, grouped_allreduce_, grouped_allreduce_async, grouped_allreduce_async_,
)
# Error-feedback residuals (export, import, release) live in their own module; they are part of this API.
from neptune_rt.residuals import (  # noqa: E402
    export_residuals, import_residuals, release,
)
