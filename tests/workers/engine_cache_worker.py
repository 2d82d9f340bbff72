"""MPI worker for the engine's response cache (csrc/engine/response_cache.h): `python engine_cache_worker.py
SCENARIO`. Results are checked against mpi4py's collectives on the same data, and the cache's use against the
hit/miss counters of nrt.stats(). Prints 'OK <rank>' per rank on success. Run by tests/test_engine_cache.py."""
from __future__ import annotations

import os
import sys

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt
from reference import expect_error

WORLD = MPI.COMM_WORLD
CACHE_KEYS = ("cache_hits", "cache_misses", "cache_invalidations", "cache_evictions")
# Sizes (float32 values) on both sides of NEPTUNE_RT_EAGER_BYTES (16K): eager sums and fused buckets.
SIZES = [1, 7, 256, 1024, 4095, 6000, 20000, 70000]


def counters() -> dict:
    s = nrt.stats()
    return {k: s[k] for k in CACHE_KEYS}


def delta(before: dict) -> dict:
    now = counters()
    return {k: now[k] - before[k] for k in CACHE_KEYS}


def same_everywhere(d: dict) -> None:
    """The cache changes only on agreed results, so its counters agree on every rank."""
    everyone = WORLD.allgather(d)
    assert all(x == everyone[0] for x in everyone), everyone


def data(step: int, i: int, count: int, r: int, dtype=np.float32) -> np.ndarray:
    # Small integers: every summation order gives the exact same float, so results compare with ==.
    rng = np.random.default_rng([step, i, r])
    return rng.integers(-50, 50, count).astype(dtype)


def reference(x: np.ndarray, op=MPI.SUM) -> np.ndarray:
    out = np.empty_like(x)
    WORLD.Allreduce(x, out, op=op)
    return out


def one_step(step: int, rng: np.random.Generator) -> None:
    """Every size as an all-reduce, a group of three and a broadcast, submitted in a rank-specific order."""
    r = nrt.rank()
    ops = [("t", i) for i in range(len(SIZES))] + [("group", 0), ("bcast", 0)]
    inputs = {i: data(step, i, c, r) for i, c in enumerate(SIZES)}
    parts = [data(step, 100 + k, 300 * (k + 1), r) for k in range(3)]
    root = 1 % nrt.size()  # a root that changed would be a new key (scenario_changes)
    bvec = data(step, 200, 500, root)
    handles = {}
    for kind, i in (ops[j] for j in rng.permutation(len(ops))):
        if kind == "t":
            handles[f"t{i}"] = nrt.allreduce_async(inputs[i], name=f"t{i}")
        elif kind == "group":
            for k, h in enumerate(nrt.grouped_allreduce_async(parts, names=[f"g{k}" for k in range(3)])):
                handles[f"g{k}"] = h
        else:
            handles["b"] = nrt.broadcast_async(bvec if r == root else np.zeros(500, np.float32), root=root, name="b")
    for i in range(len(SIZES)):
        assert np.array_equal(handles[f"t{i}"].wait(), reference(inputs[i])), (step, i)
    for k in range(3):
        assert np.array_equal(handles[f"g{k}"].wait(), reference(parts[k])), (step, k)
    assert np.array_equal(handles["b"].wait(), bvec), step


def scenario_hits() -> None:
    """Step 1 negotiates everything in full (misses); later steps run from the cache (hits), in any order."""
    nrt.init()
    rng = np.random.default_rng(1000 + nrt.rank())  # each rank its own submission order
    per_step = len(SIZES) + 3 + 1
    before = counters()
    one_step(0, rng)
    d = delta(before)
    assert d == {"cache_hits": 0, "cache_misses": per_step, "cache_invalidations": 0, "cache_evictions": 0}, d
    before = counters()
    for step in range(1, 6):
        one_step(step, rng)
    d = delta(before)
    assert d == {"cache_hits": 5 * per_step, "cache_misses": 0, "cache_invalidations": 0, "cache_evictions": 0}, d
    same_everywhere(counters())
    nrt.shutdown()


def scenario_changes() -> None:
    """Every change of the key on every rank: the slot is dropped (an invalidation), the tensor is negotiated
    in full (a miss) and the result is right; the same call again is a hit."""
    nrt.init()
    r, n = nrt.rank(), nrt.size()
    x = data(0, 0, 100, r)
    changes = [
        ("shape", lambda: (nrt.allreduce(x[:99], name="w"), reference(x[:99]))),
        ("dtype", lambda: (nrt.allreduce(x[:99].astype(np.float64), name="w"), reference(x[:99].astype(np.float64)))),
        ("op", lambda: (nrt.allreduce(x[:99].astype(np.float64), name="w", op="max"),
                        reference(x[:99].astype(np.float64), MPI.MAX))),
        ("codec", lambda: (nrt.allreduce(x[:99].astype(np.float64), name="w", op="max", codec="fp16"),
                           reference(x[:99].astype(np.float64), MPI.MAX))),
        ("prescale", lambda: (nrt.allreduce(x[:99].astype(np.float64), name="w", op="max", codec="fp16",
                                            prescale=2.0), 2 * reference(x[:99].astype(np.float64), MPI.MAX))),
        ("postscale", lambda: (nrt.allreduce(x[:99].astype(np.float64), name="w", op="max", codec="fp16",
                                             prescale=2.0, postscale=0.5),
                               reference(x[:99].astype(np.float64), MPI.MAX))),
        ("broadcast", lambda: (nrt.broadcast(x[:99].astype(np.float64), root=n - 1, name="w"),
                               WORLD.bcast(x[:99].astype(np.float64), root=n - 1))),
        ("root", lambda: (nrt.broadcast(x[:99].astype(np.float64), root=0, name="w"),
                          WORLD.bcast(x[:99].astype(np.float64), root=0))),
    ]
    got, want = nrt.allreduce(x, name="w"), reference(x)
    assert np.array_equal(got, want)
    for what, call in changes:
        before = counters()
        got, want = call()
        assert np.array_equal(got, want), what
        d = delta(before)
        assert d == {"cache_hits": 0, "cache_misses": 1, "cache_invalidations": 1, "cache_evictions": 0}, (what, d)
        before = counters()
        got, want = call()
        assert np.array_equal(got, want), what
        assert delta(before)["cache_hits"] == 1, (what, delta(before))
    same_everywhere(counters())
    nrt.shutdown()


def scenario_eviction() -> None:
    """NEPTUNE_RT_CACHE_CAPACITY=2: least recently used slots are reused, and a name evicted earlier comes back
    with another shape as an ordinary miss."""
    assert os.environ["NEPTUNE_RT_CACHE_CAPACITY"] == "2"
    nrt.init()
    r = nrt.rank()

    def run(name: str, count: int = 10) -> None:
        x = data(len(name), count, count, r)
        assert np.array_equal(nrt.allreduce(x, name=name), reference(x)), name

    expected = [  # name, (hits, misses, evictions) after it
        ("a", (0, 1, 0)), ("b", (0, 2, 0)), ("a", (1, 2, 0)),
        ("c", (1, 3, 1)),   # evicts b, the least recently used
        ("a", (2, 3, 1)),
        ("b", (2, 4, 2)),   # evicts c
        ("c", (2, 5, 3)),   # evicts a
        ("b", (3, 5, 3)),
    ]
    start = counters()
    for name, (hits, misses, evictions) in expected:
        run(name)
        d = delta(start)
        assert (d["cache_hits"], d["cache_misses"], d["cache_evictions"]) == (hits, misses, evictions), (name, d)
    before = counters()
    run("a", count=33)  # evicted earlier; now another shape: a miss, not an invalidation
    d = delta(before)
    assert d == {"cache_hits": 0, "cache_misses": 1, "cache_invalidations": 0, "cache_evictions": 1}, d
    same_everywhere(counters())
    nrt.shutdown()


def scenario_capacity0() -> None:
    """NEPTUNE_RT_CACHE_CAPACITY=0: everything is negotiated in full, every time, as before the cache."""
    assert os.environ["NEPTUNE_RT_CACHE_CAPACITY"] == "0"
    nrt.init()
    rng = np.random.default_rng(2000 + nrt.rank())
    before = counters()
    for step in range(3):
        one_step(step, rng)
    d = delta(before)
    assert d == {"cache_hits": 0, "cache_misses": 3 * (len(SIZES) + 4), "cache_invalidations": 0,
                 "cache_evictions": 0}, d
    nrt.shutdown()


def scenario_mismatch() -> None:
    """A cached tensor whose shape changes on one rank only fails on every rank with the usual message."""
    nrt.init()
    r = nrt.rank()
    for step in range(3):
        x = data(step, 0, 10, r)
        assert np.array_equal(nrt.allreduce(x, name="w"), reference(x))
    assert counters()["cache_hits"] == 2
    x = np.ones(10 + (r == 1), np.float32)
    msg = expect_error(lambda: nrt.allreduce(x, name="w"), RuntimeError, "'w'", "different arguments", "rank 0",
                       "rank 1", "float32[10]", "float32[11]")
    assert np.all(nrt.allreduce(np.ones(3), name="after") == nrt.size())  # still usable
    x = data(9, 0, 10, r)
    assert np.array_equal(nrt.allreduce(x, name="w"), reference(x))  # and the name too
    print(f"rank {r} got: {msg.splitlines()[0]}", flush=True)
    nrt.shutdown()


def scenario_join() -> None:
    """Cached tensors while ranks join: joined ranks contribute nothing, min/max is refused on the cached path
    as on the full one, and barriers between steps."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    for step in range(2):  # everyone: "grad" and "mx" become cached
        nrt.allreduce(np.ones(7), name="grad")
        nrt.allreduce(np.ones(7), name="mx", op="max")
        nrt.barrier()
    before = counters()
    for step in range(r + 1):  # rank r has r+1 more batches
        got = nrt.allreduce(np.full(7, 1.0), name="grad")
        assert np.all(got == n - step), (step, got)
        avg = nrt.allreduce(np.full(3, 2.0), name="avg", op="average")
        assert np.allclose(avg, 2.0), avg
    if r == n - 1 and n > 1:  # the others have joined by now
        expect_error(lambda: nrt.allreduce(np.ones(7), name="mx", op="max"), RuntimeError, "'mx'", "have joined",
                     "only sum and average")
    assert nrt.join() in range(n)
    assert delta(before)["cache_hits"] >= r + 1  # "grad" ran from its slot at every step
    for step in range(2):  # after the join: everyone again, same names
        x = data(step, 1, 7, r, np.float64)
        assert np.array_equal(nrt.allreduce(x, name="grad"), reference(x))
        nrt.barrier()
    nrt.shutdown()


def scenario_stall() -> None:
    """A cached tensor that one rank stops submitting: the warning and the timeout name the missing rank."""
    nrt.init()
    r = nrt.rank()
    for step in range(2):
        nrt.allreduce(np.ones(5), name="w")
    assert counters()["cache_hits"] == 1
    if r != 2:
        expect_error(lambda: nrt.allreduce(np.ones(5), name="w"), RuntimeError, "'w'", "never by ranks [2]")
    else:
        expect_error(lambda: nrt.allreduce(np.ones(5), name="other"), RuntimeError, "'other'", "never by ranks [0, 1]")
    assert np.all(nrt.allreduce(np.ones(3), name="after") == nrt.size())
    nrt.shutdown()


def scenario_capacity_mismatch() -> None:
    """Caches of different capacities would give slots different meanings: every rank refuses at once."""
    os.environ["NEPTUNE_RT_CACHE_CAPACITY"] = "16" if WORLD.rank == 1 else "1024"
    nrt.init()
    expect_error(lambda: nrt.allreduce(np.ones(3), name="x"), RuntimeError, f"rank {WORLD.rank}",
                 "NEPTUNE_RT_CACHE_CAPACITY differs between ranks (rank 0: 1024, rank 1: 16)",
                 "same value on every rank")
    print(f"CAPACITY-MISMATCH-OK {WORLD.rank}", flush=True)
    WORLD.Barrier()  # both have reported; the exit handler then aborts the job (the engine failed)


def scenario_algorithm_mismatch() -> None:
    """Ranks that would run different collectives on one dense bucket (MPI_Iallreduce on one, ours on the other)
    refuse at once, in the first cycle, instead of timing out in the bucket."""
    os.environ["NEPTUNE_RT_ALLREDUCE_ALGORITHM"] = "ring" if WORLD.rank == 1 else "auto"
    nrt.init()
    expect_error(lambda: nrt.allreduce(np.ones(3), name="x"), RuntimeError, f"rank {WORLD.rank}",
                 "NEPTUNE_RT_ALLREDUCE_ALGORITHM or NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES differs between ranks",
                 "rank 0: auto, 262144 bytes; rank 1: ring, 1048576 bytes", "same values on every rank")
    print(f"ALGORITHM-MISMATCH-OK {WORLD.rank}", flush=True)
    WORLD.Barrier()  # both have reported; the exit handler then aborts the job (the engine failed)


if __name__ == "__main__":
    globals()[f"scenario_{sys.argv[1]}"]()
    print(f"OK {WORLD.rank}", flush=True)
