"""MPI worker for the engine's completion callbacks, its validation at enqueue and the spread of one rank's
engine failure: `python engine_callbacks_worker.py SCENARIO`. Prints 'OK <rank>' per rank on success. Run by
tests/test_engine_callbacks.py."""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt
from neptune_rt import engine
from reference import expect_error

WORLD = MPI.COMM_WORLD


def scenario_callbacks() -> None:
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    caller = threading.get_ident()

    def submit_first(name: str, *callbacks) -> "nrt.Handle":
        """Rank 0 submits and adds `callback` before any peer submits (so it cannot have completed yet: the
        callback runs on completion, not inline); the peers submit after a barrier, without callbacks."""
        if r == 0:
            h = nrt.allreduce_async(np.ones(8), name=name)
            for callback in callbacks:
                h.add_done_callback(callback)
            WORLD.Barrier()
        else:
            WORLD.Barrier()
            h = nrt.allreduce_async(np.ones(8), name=name)
        return h

    # 1. A callback that waits on another handle: it completes (the callback does not hold the cycle lock).
    got: dict = {}
    done = threading.Event()

    def waits_on_another(h) -> None:
        got["thread"] = threading.get_ident()
        got["inner"] = nrt.allreduce(np.full(4, float(r)), name="inner")  # submits and waits, from the callback
        done.set()

    h = submit_first("outer", waits_on_another)
    if r == 0:
        assert done.wait(30), f"rank {r}: a callback waiting on another handle never finished"
        assert np.all(got["inner"] == sum(range(n))), got["inner"]
        assert got["thread"] != caller, "the callback ran on the submitting thread"
    else:
        assert np.all(nrt.allreduce(np.full(4, float(r)), name="inner") == sum(range(n)))
    assert np.all(h.wait() == n)

    # 2. A slow callback holds up later callbacks, never communication: while rank 0's sleeps, every rank's
    # all-reduces complete (the callback waits for them to finish before it returns).
    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def slow(_h) -> None:
        started.set()
        release.wait(20)
        finished.set()

    submit_first("slow", slow)
    if r == 0:
        assert started.wait(30)
    for i in range(5):
        assert np.all(nrt.allreduce(np.full(1000, 1.0), name=f"during{i}") == n)
    big = nrt.allreduce(np.ones(200000, np.float32), name="during_big")
    assert np.all(big == n)
    if r == 0:
        assert not finished.is_set(), f"rank {r}: communication waited for a slow callback"
        release.set()
        assert finished.wait(20)

    # 3. Callbacks run in completion order, each exactly once; one added after completion runs at once here.
    order: list[str] = []
    handles = [nrt.allreduce_async(np.ones(3), name=f"seq{i}") for i in range(6)]
    for i, hh in enumerate(handles):
        hh.add_done_callback(lambda _h, i=i: order.append(f"seq{i}"))
    for hh in handles:
        hh.wait()
    late = []
    handles[0].add_done_callback(lambda _h: late.append(threading.get_ident()))
    assert late == [caller], late
    deadline = time.monotonic() + 20
    while len(order) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(order) == sorted(f"seq{i}" for i in range(6)) and len(order) == 6, order

    # 4. A callback that raises is reported; later callbacks still run.
    ran = threading.Event()
    submit_first("raises", lambda _h: 1 / 0, lambda _h: ran.set()).wait()
    assert r != 0 or ran.wait(20)

    # 5. Shutting down from a callback would wait for itself: it raises at once instead.
    err: dict = {}
    raised = threading.Event()

    def shuts_down(_h) -> None:
        t0 = time.monotonic()
        try:
            engine._engine.shutdown()
        except RuntimeError as e:
            err["msg"], err["s"] = str(e), time.monotonic() - t0
        raised.set()

    submit_first("shut", shuts_down)
    if r == 0:
        assert raised.wait(20)
        assert "completion callback" in err.get("msg", ""), err
        assert err["s"] < 1.0, err
    assert np.all(nrt.allreduce(np.ones(3), name="still_running") == n)
    nrt.shutdown()


def scenario_validation() -> None:
    nrt.init()
    r = nrt.rank()
    # Only rank 0 makes these mistakes; each is refused at once, in the caller, naming the tensor. The others
    # meanwhile wait at an MPI barrier: nothing of the bad calls ever reaches the engine.
    if r == 0:
        x = np.ones(6, np.int32)
        t0 = time.monotonic()
        expect_error(lambda: nrt.allreduce(x, name="iscaled", prescale=0.5), ValueError, "rank 0", "'iscaled'",
                     "int32", "prescale")
        expect_error(lambda: nrt.allreduce(x, name="iscaled2", postscale=3.0), ValueError, "'iscaled2'")
        expect_error(lambda: nrt.allreduce(np.ones(3), name="nan", prescale=float("nan")), ValueError, "'nan'",
                     "finite")
        expect_error(lambda: nrt.allreduce(np.ones(4, np.int64), name="icodec", codec="int8"), ValueError,
                     "'icodec'", "floating")
        a = np.ones(3, np.float32)
        native = engine._engine
        # Shapes whose element count wraps or overflows (the buffer has 3 elements: (-1)*(-3) would match).
        expect_error(lambda: native.enqueue_allreduce("neg", a, a, "float32", [-1, -3], "sum"), ValueError,
                     "'neg'", "negative dimension")
        expect_error(lambda: native.enqueue_allreduce("huge", a, a, "float32", [1 << 40, 1 << 30], "sum"),
                     ValueError, "'huge'", "2^64")
        expect_error(lambda: native.enqueue_allreduce("big", a, a, "float32", [1 << 30, 1 << 30], "sum"),
                     ValueError, "'big'", "2^48")
        expect_error(lambda: native.enqueue_broadcast("root", a, a, "float32", [3], 7), ValueError, "'root'",
                     "root 7")
        expect_error(lambda: nrt.grouped_allreduce([np.ones(2), np.ones(2, np.float32)], ["g1", "g2"]),
                     ValueError, "g1", "dtype")
        expect_error(lambda: nrt.grouped_allreduce([np.ones(2), np.ones(2)], ["same", "same"]), ValueError,
                     "'same'", "twice")
        assert time.monotonic() - t0 < 5, "validation waited for something"
    WORLD.Barrier()
    # Nothing bad reached the engine: it still works on every rank, and no name was left in flight.
    got = nrt.allreduce(np.ones(5, np.int32), name="iscaled")
    assert np.all(got == nrt.size())
    nrt.shutdown()


def scenario_failure() -> None:
    """Rank 1's engine fails on its own (injected): every rank stops in its next cycle with rank 1's reason,
    long before the timeout (NEPTUNE_RT_TIMEOUT_SECONDS=30 in the test)."""
    nrt.init()
    r = nrt.rank()
    assert np.all(nrt.allreduce(np.ones(3), name="before") == nrt.size())
    if r == 1:
        engine._engine._fail_next_cycle("injected failure for the test")
    t0 = time.monotonic()
    msg = expect_error(lambda: nrt.allreduce(np.ones(100000, np.float32), name="x"), RuntimeError,
                       "injected failure for the test")
    took = time.monotonic() - t0
    if r != 1:
        assert "engine of rank 1 failed" in msg, msg
    assert took < 10, f"rank {r}: the failure took {took:.1f} s to arrive"
    expect_error(lambda: nrt.allreduce(np.ones(3), name="after"), RuntimeError, "injected failure")
    print(f"FAILED-FAST rank {r} after {took:.2f} s", flush=True)
    nrt.shutdown()  # returns at once after a failure
    WORLD.Barrier()  # every rank prints OK before the first exit handler aborts the job (docs/failures.md)


if __name__ == "__main__":
    globals()[f"scenario_{sys.argv[1]}"]()
    print(f"OK {WORLD.rank}", flush=True)
