"""MPI worker for tests/test_failures.py: `python failures_worker.py SCENARIO [VARIANT]`. Each scenario makes
ranks fall out of step on purpose (a rank re-inits alone, stops with SIGSTOP, sleeps instead of shutting
down) and asserts, on the ranks that keep going, the error, its wording and its timing. Ranks print
'<MARKER> <rank> ...' lines that the test checks (and 'OK <rank>' when a scenario returns: in those that
end the job by the exit handler's MPI_Abort, that is before the abort)."""
from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
import weakref

if len(sys.argv) > 1 and sys.argv[1] == "thread_level":
    import mpi4py
    mpi4py.rc.thread_level = "serialized"  # before mpi4py.MPI is imported

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt

WORLD = MPI.COMM_WORLD
RANK = WORLD.Get_rank()
TIMEOUT = float(os.environ.get("NEPTUNE_RT_TIMEOUT_SECONDS", "300"))
SLACK = 3.0  # seconds beyond the timeout: detection, unwinding, a loaded 2-core machine


def expect(fn, kind, *fragments):
    """Runs fn, which must raise `kind` with every fragment in its message; returns (message, seconds)."""
    t0 = time.monotonic()
    try:
        fn()
    except kind as err:
        elapsed = time.monotonic() - t0
        for f in fragments:
            assert f in str(err), f"rank {RANK}: error lacks {f!r}:\n{err}"
        return str(err), elapsed
    raise AssertionError(f"rank {RANK}: expected {kind.__name__} containing {fragments}")


def stop_self() -> None:
    """Stops this whole process (engine thread included) without exiting: a rank that goes silent."""
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSTOP)


def check_after_failure(first: str, keep: weakref.ref | None) -> None:
    """What a user may still do after a communication failure, and what the runtime must guarantee."""
    # Every later call fails at once with the original error.
    again, t = expect(lambda: nrt.allreduce(np.ones(3), name="after_failure"), RuntimeError)
    assert t < 0.5 and first.splitlines()[0] in again, (t, again)
    # The buffers a failed operation used stay alive: requests left posted may still touch them.
    if keep is not None:
        gc.collect()
        assert keep() is not None, f"rank {RANK}: the failed operation's buffer was freed"
    # init() straight after the failure (no shutdown() first) is refused at once, with why: it must not start a
    # new set-up on a communicator left with requests posted.
    _, t = expect(nrt.init, RuntimeError, "init() refused", first.splitlines()[0])
    assert t < 0.5, t
    # shutdown() returns at once (the failure was raised already); init() is refused at once, with why.
    t0 = time.monotonic()
    nrt.shutdown()
    assert time.monotonic() - t0 < 0.5
    _, t = expect(nrt.init, RuntimeError, "init() refused", first.splitlines()[0])
    assert t < 0.5, t


def scenario_init_twice() -> None:
    """Rank 0 calls init() again after shutdown(); rank 1 has finished. Rank 0's set-up must time out."""
    nrt.init()
    assert np.array_equal(nrt.allreduce(np.full(4, RANK + 1.0), name="warm"), np.full(4, 3.0))
    nrt.shutdown()
    if RANK == 1:
        print(f"FINISHED {RANK}", flush=True)
        return
    msg, t = expect(nrt.init, TimeoutError, "rank 0: init() timed out", "MPI_Comm_idup",
                    "communicator of 2 ranks", "set-up step 1 of 2",
                    "ranks out of step: one rank called init() while others did not")
    assert TIMEOUT - 0.5 <= t <= TIMEOUT + SLACK, t
    print(f"INIT-TIMEOUT-OK {RANK} {t:.2f}", flush=True)
    _, t = expect(nrt.init, RuntimeError, "init() refused", "MPI_Comm_idup")
    assert t < 0.5, t
    print(f"REINIT-REFUSED-OK {RANK}", flush=True)
    # Returning ends the script: the exit handler aborts the job (rank 1 may sit in MPI_Finalize).


def scenario_shutdown_alone(variant: str) -> None:
    """Rank 1 never calls shutdown(): it stops (SIGSTOP) or sleeps. Rank 0's shutdown() must time out."""
    nrt.init()
    assert np.array_equal(nrt.allreduce(np.full(4, RANK + 1.0), name="warm"), np.full(4, 3.0))
    if RANK == 1:
        if variant == "stop":
            stop_self()
        time.sleep(600)  # far longer than the test allows: only the abort ends this rank
        return
    msg, t = expect(nrt.shutdown, TimeoutError, "rank 0: shutdown() did not complete", "communicator of 2 ranks",
                    "shut-down step 1 of 1", "ranks out of step: this rank called shutdown() while others did not")
    assert t <= TIMEOUT + SLACK, t
    print(f"SHUTDOWN-TIMEOUT-OK {RANK} {t:.2f}", flush=True)
    _, t = expect(nrt.init, RuntimeError, "init() refused")
    assert t < 0.5, t
    print(f"REINIT-REFUSED-OK {RANK}", flush=True)


def scenario_reinit() -> None:
    """init/shutdown/init/... on every rank: each engine computes right (vs mpi4py), none leaks state."""
    local_size = WORLD.Split_type(MPI.COMM_TYPE_SHARED, key=RANK).Get_size()
    for round_ in range(3):
        nrt.init()
        assert nrt.rank() == RANK and nrt.size() == WORLD.Get_size() and nrt.local_size() == local_size
        for count in (5, 300_000):  # eager (inside the negotiation) and ring
            x = np.arange(count, dtype=np.float64) * (RANK + 1) + round_
            want = WORLD.allreduce(x, op=MPI.SUM)
            got = nrt.allreduce(x, name=f"round{round_}.{count}")
            assert np.array_equal(got, want), (round_, count)
        nrt.shutdown()
        assert not nrt.is_initialized()
        expect(lambda: nrt.allreduce(np.ones(2)), RuntimeError, "not initialized")


def scenario_silent_rank(variant: str) -> None:
    """Rank 1 stops (SIGSTOP) without exiting: before submitting ('idle'), or at a random point of a stream of
    large all-reduces ('busy': our ring; 'busy_native': MPI_Iallreduce). Every other rank must fail with the
    engine's timeout, not hang."""
    survivors = WORLD.Split(int(RANK == 1), RANK)  # ranks 0 and 2 finish their checks before either aborts
    nrt.init()
    n = nrt.size()
    assert np.array_equal(nrt.allreduce(np.full(4, RANK + 1.0), name="warm"), np.full(4, n * (n + 1) / 2))
    if variant == "idle":
        if RANK == 1:
            stop_self()
        x = np.ones(300_000, np.float32)
        keep = weakref.ref(x)
        first, t = expect(lambda: nrt.allreduce_(x, name="after_stop"), TimeoutError, "timed out", "rank 1",
                          "NEPTUNE_RT_TIMEOUT_SECONDS")
        del x
    else:
        if RANK == 1:
            threading.Timer(0.5, stop_self).start()
        last_ok = time.monotonic()
        first = None
        # 16 MB: most of the time goes to the ring, not the negotiation; 1 MB ('busy_native'): to MPI_Iallreduce
        # (engine.h, kNativeAllreduceMaxBytes), whose wait has the same deadline.
        x = np.empty(4_000_000 if variant == "busy" else 250_000, np.float32)
        for i in range(100_000):
            x.fill(RANK + 1)
            try:
                nrt.allreduce_(x, name=f"big{i}")
            except TimeoutError as err:
                first, t = str(err), time.monotonic() - last_ok
                break
            assert np.all(x == n * (n + 1) / 2), i
            last_ok = time.monotonic()
        assert first is not None and "timed out" in first and "NEPTUNE_RT_TIMEOUT_SECONDS" in first, first
        keep = weakref.ref(x)
        del x
    if RANK == 1:  # the stopped rank, resumed only by the job's teardown (SIGCONT before the kill): nothing to report
        return
    assert t <= TIMEOUT + SLACK, t
    print(f"DETECTED-OK {RANK} {t:.2f} {first.splitlines()[0]}", flush=True)
    check_after_failure(first, keep)
    print(f"AFTER-FAILURE-OK {RANK}", flush=True)
    survivors.Barrier()


def scenario_poisoned_direct() -> None:
    """The direct ring over a Communicator: rank 1 arrives late, so rank 0 times out with receives and sends
    still posted into its scratch and its buffer. The communicator is disabled; the buffer is kept."""
    from neptune_rt import _C
    comm = _C.Communicator(WORLD, timeout=30)
    if RANK == 0:
        buf = np.ones(1 << 18, np.float32)  # 1 MB: 64 segments of 4 KB per chunk, a window of them posted
        keep = weakref.ref(buf)
        first, t = expect(lambda: _C.allreduce_inplace(comm, buf, "float32", algorithm="ring", segment_bytes=4096,
                                                       timeout=1.5, name="victim"),
                          TimeoutError, "rank 0 timed out", "victim")
        assert 1.4 <= t <= 1.5 + SLACK, t
        assert comm.failed == first, (comm.failed, first)
        assert comm.abandoned_requests >= 2, comm.abandoned_requests  # receives of the window, sends
        del buf
        gc.collect()
        assert keep() is not None, "the buffer of the failed all-reduce was freed"
        again, t = expect(lambda: _C.allreduce_inplace(comm, np.ones(16, np.float32), "float32", timeout=30,
                                                       name="next"), TimeoutError, first, "disabled")
        assert t < 0.5, t
        # Garbage in new allocations must not change what the late peer's traffic may still write.
        junk = [np.full(1 << 18, 7.0, np.float32) for _ in range(4)]
        WORLD.send("late peer may go", dest=1)
        WORLD.recv(source=1)
        assert all(np.all(j == 7.0) for j in junk)
    else:
        WORLD.recv(source=0)  # rank 0 has timed out
        buf = np.ones(1 << 18, np.float32)
        try:  # meets rank 0's abandoned traffic (or nothing): it may time out, but must not hang
            _C.allreduce_inplace(comm, buf, "float32", algorithm="ring", segment_bytes=4096, timeout=1.5,
                                 name="victim")
        except TimeoutError:
            pass
        WORLD.send("done", dest=0)
    print(f"POISON-OK {RANK}", flush=True)
    WORLD.Barrier()


def scenario_free_alone() -> None:
    """A healthy communicator is released without waiting for its peers (MPI_Comm_free is local in Open MPI;
    were it not, this rank would hang here while rank 1 sleeps)."""
    from neptune_rt import _C
    comm = _C.Communicator(WORLD, timeout=10)
    if RANK == 0:
        t0 = time.monotonic()
        del comm
        gc.collect()
        assert time.monotonic() - t0 < 1.0, time.monotonic() - t0
        print(f"FREE-OK {RANK}", flush=True)
    else:
        time.sleep(3)
        del comm
    WORLD.Barrier()


def scenario_thread_level() -> None:
    """The C++ engine itself refuses an MPI without MPI_THREAD_MULTIPLE, and says how to fix it."""
    from neptune_rt import _C
    assert MPI.Query_thread() == MPI.THREAD_SERIALIZED
    expect(lambda: _C.Engine(WORLD, fusion_bytes=1 << 20, eager_bytes=1024, cycle_ms=1.0, timeout=10,
                             stall_warning=5, segment_bytes=0),
           RuntimeError, "MPI_THREAD_MULTIPLE", "MPI_THREAD_SERIALIZED", "mpi4py.rc.thread_level")
    expect(nrt.init, RuntimeError, "MPI_THREAD_MULTIPLE")


if __name__ == "__main__":
    name, *rest = sys.argv[1:]
    globals()[f"scenario_{name}"](*rest)
    print(f"OK {RANK}", flush=True)
