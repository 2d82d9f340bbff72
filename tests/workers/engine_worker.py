"""MPI worker for the engine API: `python engine_worker.py SCENARIO`. Each scenario asserts real results
against numpy / mpi4py and prints 'OK <rank>' per rank on success."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt
from neptune_rt.codecs.bounds import allreduce_bound
from reference import DTYPES, OPS, close, expect_error, make_data, reduce_reference

WORLD = MPI.COMM_WORLD


def as_user(x: np.ndarray, dtype: str):
    """numpy has no bfloat16: bfloat16 test data (uint16 words) goes in as a torch tensor."""
    if dtype != "bfloat16":
        return x
    import torch
    return torch.from_numpy(x.view(np.int16).copy()).view(torch.bfloat16)


def from_user(x, dtype: str) -> np.ndarray:
    if dtype != "bfloat16":
        return x
    import torch
    return x.view(torch.int16).numpy().view(np.uint16)


def scenario_api(with_torch: bool = True) -> None:
    """Every dtype and op against numpy; `with_torch=False` (scenario api_numpy) leaves out bfloat16 and torch
    tensors, whose `import torch` costs each rank seconds, for the runs that vary the engine's settings."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    assert (n, r) == (WORLD.size, WORLD.rank)
    assert 0 <= nrt.local_rank() < nrt.local_size() <= n
    nrt.init()  # idempotent
    for count in [0, 1, 7, 1000, 10007, 300000]:
        for dtype in [d for d in DTYPES if with_torch or d != "bfloat16"]:
            for op in OPS:
                inputs = [make_data(dtype, count, k, count) for k in range(n)]
                out = nrt.allreduce(as_user(inputs[r], dtype), name=f"{dtype}.{op}.{count}", op=op)
                out = from_user(out, dtype)
                assert out.dtype == inputs[r].dtype and out.shape == inputs[r].shape
                assert close(out, reduce_reference(inputs, dtype, op), dtype, n), (count, dtype, op)
                assert np.array_equal(inputs[r], make_data(dtype, count, r, count)), "input modified"
    # in place through the synchronous path (one native call, engine thread left asleep), every plain dtype
    for count in [1, 1000, 300000]:
        for dtype in [d for d in DTYPES if d != "bfloat16"]:
            for op in OPS:
                inputs = [make_data(dtype, count, k, count + 1) for k in range(n)]
                x = inputs[r].copy()
                assert nrt.allreduce_(x, name=f"now.{dtype}.{op}.{count}", op=op) is x
                assert close(x, reduce_reference(inputs, dtype, op), dtype, n), ("allreduce_", count, dtype, op)
    # The algorithm NEPTUNE_RT_ALLREDUCE_ALGORITHM asked for is the one that ran every bucket above 64 KiB.
    asked = os.environ.get("NEPTUNE_RT_ALLREDUCE_ALGORITHM")
    if asked and os.environ.get("NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES") == "0" and n > 1:
        ran = {b["algorithm"] for b in nrt.bucket_records() if b["codec"] == "none" and b["bytes_raw"] > 65536}
        assert ran == {asked}, f"rank {r}: asked for {asked}, buckets above 64 KiB ran {ran}"
    # in place, 2-D, against mpi4py
    x = np.random.default_rng(r).standard_normal((33, 17))
    ref = np.empty_like(x)
    WORLD.Allreduce(x, ref)
    nrt.allreduce_(x, name="inplace2d")
    assert np.allclose(x, ref)
    # many concurrent named operations, submitted in a different order on every rank
    sizes = [1 + (i * 7919) % 5000 for i in range(120)] + [200000, 1 << 20]
    order = np.random.default_rng(100 + r).permutation(len(sizes))
    handles = {}
    for i in order:
        handles[i] = nrt.allreduce_async(np.full(sizes[i], r + i, np.float32), name=f"grad{i}", op="sum")
    for i, h in handles.items():
        assert nrt.poll(h) in (True, False)
        got = nrt.synchronize(h)
        assert np.all(got == sum(k + i for k in range(n))), f"grad{i}"
    # Small all-reduces of mixed dtypes and odd sizes in flight together: they ride in one negotiation message as
    # eager sums, kept in name order and 8-byte aligned (the parser checks both), reduced as the groups meet.
    mixed = [(dtype, op, 1 + (i * 37) % 300) for i, (dtype, op) in
             enumerate((d, o) for d in DTYPES if d != "bfloat16" for o in OPS)]
    names = [f"mixed.{'x' * (i % 7)}{i}" for i in range(len(mixed))]  # name lengths vary: padding varies
    inputs = {i: [make_data(dtype, count, k, 7 + i) for k in range(n)] for i, (dtype, _, count) in enumerate(mixed)}
    order = np.random.default_rng(200 + r).permutation(len(mixed))
    nrt.bucket_records(clear=True)
    pending = {i: nrt.allreduce_async(inputs[i][r], name=names[i], op=mixed[i][1]) for i in order}
    for i, h in pending.items():
        dtype, op, count = mixed[i]
        assert close(h.wait(), reduce_reference(inputs[i], dtype, op), dtype, n), ("mixed", names[i], dtype, op, count)
    eager = [b for b in nrt.bucket_records() if b.get("algorithm") == "eager"]
    if int(os.environ.get("NEPTUNE_RT_EAGER_BYTES", "16384")) >= 2400:  # the largest: 300 int64 or float64
        assert len(eager) == len(mixed), f"rank {r}: {len(eager)} of {len(mixed)} small all-reduces rode as eager sums"
    # prescale / postscale (weighted averaging)
    w = (r + 1) / sum(range(1, n + 1))
    got = nrt.allreduce(np.full(50, 2.0), name="weighted", prescale=w, postscale=3.0)
    assert np.allclose(got, 6.0)
    # allgather with different first dimensions; broadcast from every root
    g = nrt.allgather(np.full((r + 1, 3), r, np.int32), name="gather")
    assert g.shape == (n * (n + 1) // 2, 3)
    assert np.array_equal(g[:, 0], np.concatenate([np.full(k + 1, k) for k in range(n)]))
    for root in range(n):
        b = nrt.broadcast(np.full(1000, r, np.float64), root=root, name=f"bcast{root}")
        assert np.all(b == root)
        big = np.full(600000, r, np.uint8)
        nrt.broadcast_(big, root=root, name=f"bigbcast{root}")
        assert np.all(big == root)
    nrt.barrier()
    if with_torch:
        api_torch_tensors(n, r)
    nrt.shutdown()
    assert not nrt.is_initialized()


def scenario_api_numpy() -> None:
    scenario_api(with_torch=False)


def api_torch_tensors(n: int, r: int) -> None:
    """torch tensors, including bfloat16, through the same API."""
    import torch
    t = torch.arange(10, dtype=torch.float32) * (r + 1)
    assert torch.allclose(nrt.allreduce(t, name="torch", op="average"), torch.arange(10.0) * (n + 1) / 2)
    tb = torch.full((5,), float(r + 1), dtype=torch.bfloat16)
    nrt.allreduce_(tb, name="torch_bf16")
    assert tb.dtype == torch.bfloat16 and float(tb[0]) == n * (n + 1) / 2
    tg = nrt.allgather(torch.full((2,), float(r)), name="torch_gather")
    assert isinstance(tg, torch.Tensor) and tg.shape == (2 * n,)


def scenario_codecs() -> None:
    """Every codec through the engine (forced and adaptive): results identical on all ranks, within the
    codec's bound of the exact sum, and error feedback makes the running mean of results converge."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    algorithm = os.environ.get("NEPTUNE_RT_COMPRESSED_ALGORITHM", "auto")
    if algorithm == "auto":
        from neptune_rt import _C
        algorithm = _C.choose_compressed_algorithm(n)
    for codec in ["fp16", "bf16", "int8", "int4", "onebit", "auto", "auto_lowbit"]:
        for dtype in ["float32", "float64", "float16"]:
            for count in [1, 7, 1000, 70001]:
                x = np.random.default_rng(r * 31 + count).standard_normal(count).astype(dtype)
                parts = [np.random.default_rng(k * 31 + count).standard_normal(count).astype(dtype)
                         .astype(np.float64) for k in range(n)]
                exact = np.sum(parts, axis=0)
                h = nrt.allreduce_async(x, name=f"{codec}.{dtype}.{count}", codec=codec,
                                        adaptive=codec.startswith("auto"))
                y = h.wait()
                assert y.dtype == x.dtype
                # Per element, the bound of the codec's error model (neptune_rt/codecs/bounds.py) plus the
                # dtype conversions around the fp32 work buffer.
                mag = np.sum(np.abs(parts), axis=0)
                used = h.codec_used
                if used == "none" and dtype == "float16":  # dense: summed in float16 (eager or 16-bit ring)
                    used = "fp16"
                bound = allreduce_bound(used, parts, algorithm, block=256)
                bound += {"float64": mag * 2.0 ** -24, "float16": (mag + bound) * 2.0 ** -11 + 2.0 ** -24}.get(dtype, 0)
                err = np.abs(y.astype(np.float64) - exact)
                assert np.all(err <= bound), (codec, dtype, count, h.codec_used, int(np.argmax(err - bound)),
                                              float(np.max(err - bound)))
                gathered = WORLD.allgather(y)
                assert all(np.array_equal(gathered[0], g) for g in gathered), (codec, "ranks differ")
                assert len(set(WORLD.allgather(h.codec_used))) == 1
                assert h.wire_bytes > 0 or n == 1
    # error feedback: the same gradient every step; the mean of onebit results approaches the exact mean
    if n == 1:
        nrt.shutdown()
        return
    g = np.random.default_rng(r).standard_normal(4096).astype(np.float32)
    exact = np.sum([np.random.default_rng(k).standard_normal(4096).astype(np.float32) for k in range(n)], axis=0)
    for codec, steps, factor in [("int8", 40, 0.1), ("onebit", 60, 0.75)]:
        total = np.zeros_like(g, dtype=np.float64)
        for step in range(steps):
            y = nrt.allreduce(g, name=f"ef.{codec}", codec=codec, adaptive=False)
            total += y
            if step == 0:
                first_err = np.abs(y - exact).max()
        # sum of results = sum of exact - residuals: the mean's error shrinks as the residuals stay bounded
        mean_err = np.abs(total / steps - exact).max()
        assert mean_err < factor * first_err, (codec, mean_err, first_err)
    # integer tensors cannot be compressed: refused at once, in the caller, naming the tensor
    expect_error(lambda: nrt.allreduce(np.ones(5, np.int32), name="ints", codec="int8", adaptive=False),
                 ValueError, "'ints'", "floating")
    nrt.shutdown()


def scenario_subcomm() -> None:
    r = WORLD.rank
    sub = WORLD.Split(color=r % 2, key=r)
    nrt.init(sub)
    assert nrt.size() == sub.size and nrt.rank() == sub.rank
    x = np.random.default_rng(r).standard_normal(5000)
    ref = np.empty_like(x)
    sub.Allreduce(x, ref)
    assert np.allclose(nrt.allreduce(x, name="sub"), ref)
    nrt.shutdown()


def scenario_mismatch(kind: str) -> None:
    nrt.init()
    r = nrt.rank()
    if kind == "shape":
        x = np.ones(10 + (r == 1), np.float32)
        msg = expect_error(lambda: nrt.allreduce(x, name="w"), RuntimeError, "'w'", "rank 0", "rank 1",
                           "float32[10]", "float32[11]")
    elif kind == "dtype":
        x = np.ones(10, np.float32 if r == 0 else np.float64)
        msg = expect_error(lambda: nrt.allreduce(x, name="w"), RuntimeError, "'w'", "float64")
    elif kind == "op":
        msg = expect_error(lambda: nrt.allreduce(np.ones(4), name="w", op="sum" if r == 0 else "max"),
                           RuntimeError, "op=sum", "op=max")
    else:  # names differ: nobody can match; the stall times out on every rank with the ranks named
        msg = expect_error(lambda: nrt.allreduce(np.ones(4), name=f"only_on_{r}"), RuntimeError,
                           f"'only_on_{r}'", "never by ranks")
    # the engine is still usable after a metadata error
    assert np.all(nrt.allreduce(np.ones(3), name="after") == nrt.size())
    print(f"rank {r} got: {msg.splitlines()[0]}", flush=True)
    nrt.shutdown()


def scenario_errors() -> None:
    expect_error(lambda: nrt.allreduce(np.ones(3)), RuntimeError, "init")
    for algorithm in ("bogus", "recursive_doubling"):  # the latter is for small buffers only
        os.environ["NEPTUNE_RT_ALLREDUCE_ALGORITHM"] = algorithm
        # Refused before any set-up (nothing to clean up), naming the knob, the value and the choices.
        expect_error(nrt.init, ValueError, f"NEPTUNE_RT_ALLREDUCE_ALGORITHM='{algorithm}' is not valid",
                     "'ring', or 'halving_doubling'")
    del os.environ["NEPTUNE_RT_ALLREDUCE_ALGORITHM"]
    nrt.init()
    expect_error(lambda: nrt.allreduce(np.ones(3, np.complex64), name="c"), ValueError, "complex64")
    expect_error(lambda: nrt.allreduce(np.ones((4, 4))[:, 1], name="nc"), ValueError, "'nc'", "contiguous")
    expect_error(lambda: nrt.allreduce(np.ones(3), name="o", op="prod"), ValueError, "'o'", "prod")
    expect_error(lambda: nrt.broadcast(np.ones(3), root=99, name="b"), ValueError, "root 99")
    expect_error(lambda: nrt.allreduce(np.ones(3), codec="zip"), ValueError, "zip")
    # Rank 0 submits "dup" twice while the others hold back theirs (so it cannot complete in between).
    if nrt.rank() == 0:
        h = nrt.allreduce_async(np.ones(3), name="dup")
        expect_error(lambda: nrt.allreduce_async(np.ones(3), name="dup"), ValueError, "'dup'", "in flight")
        WORLD.Barrier()
    else:
        WORLD.Barrier()
        h = nrt.allreduce_async(np.ones(3), name="dup")
    assert np.all(h.wait() == nrt.size())
    nrt.shutdown()


def scenario_join() -> None:
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    for step in range(r + 1):  # rank r has r+1 batches
        contributors = n - step  # ranks k >= step still have a batch this step
        got = nrt.allreduce(np.full(7, 1.0), name=f"step{step}", op="sum")
        assert np.all(got == contributors), (step, got)
        avg = nrt.allreduce(np.full(3, 2.0), name=f"avg{step}", op="average")
        assert np.allclose(avg, 2.0), avg
    last = nrt.join()
    assert last in range(n)
    nrt.shutdown()


def scenario_stream_order() -> None:
    """Stochastic rounding (NEPTUNE_RT_ROUNDING=stochastic, a fixed seed): two compressed buckets give the same
    results whichever order they run in, so cycle boundaries (timing) cannot change a forced codec's results."""
    rng = np.random.default_rng(10 + WORLD.rank)
    data = {name: rng.standard_normal(3000).astype(np.float32) for name in ("A", "B")}
    results = {}
    for order in ("AB", "BA"):
        nrt.init()  # a fresh engine each time: no counters, residuals or cache carried over
        bufs = {name: data[name].copy() for name in order}
        groups = [nrt.grouped_allreduce_async_([bufs[name]], [name], codec="int8", adaptive=False)
                  for name in order]  # every rank submits in this order, so the buckets run in it
        for g in groups:
            g.wait()
        results[order] = bufs
        nrt.shutdown()
    for name in ("A", "B"):
        assert np.array_equal(results["AB"][name], results["BA"][name]), f"bucket {name} depends on the order"
    exact = sum(np.random.default_rng(10 + k).standard_normal(3000).astype(np.float32) for k in range(WORLD.size))
    assert not np.array_equal(results["AB"]["A"], exact), "int8 was not used"


def scenario_bitwise() -> None:
    """Every rank ends with the same bytes even where the reduction is not commutative bit for bit: min and max
    of NaN against a number or of +0 against -0, and sums of NaNs with different payloads (x86 keeps the first
    operand's). Each size is checked through whichever path the environment leaves it (eager sums in the
    negotiation, recursive doubling, the ring)."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    for dtype, bits in (("float32", np.uint32), ("float64", np.uint64), ("float16", np.uint16)):
        ftype = np.dtype(dtype)
        quiet = {np.uint32: 0x7FC00000, np.uint64: 0x7FF8000000000000, np.uint16: 0x7E00}[bits]
        for count in (4, 1000, 6000, 100000):
            x = np.arange(count, dtype=np.float64).astype(ftype)
            x[0::4] = np.array(quiet + r + 1, dtype=bits).view(ftype)  # NaNs whose payload names the rank
            x[1::4] = -0.0 if r % 2 else 0.0
            x[2::4] = 0.0 if r % 2 else -0.0
            for op in ("min", "max", "sum"):
                got = nrt.allreduce(x, name=f"bitwise.{dtype}.{count}.{op}", op=op)
                everyone = WORLD.allgather(got.view(bits).tobytes())
                assert all(b == everyone[0] for b in everyone), \
                    f"rank {r}: {op} of {count} {dtype} differs between ranks ({n} ranks)"


def scenario_timeout() -> None:
    nrt.init()
    r = nrt.rank()
    if r == 0:
        t0 = time.time()
        expect_error(lambda: nrt.allreduce(np.ones(3), name="lonely"), TimeoutError, "rank 0", "lonely")
        print(f"TIMEOUT-OK after {time.time() - t0:.1f} s", flush=True)
        return  # exiting with a failed engine aborts the job, so rank 1 does not linger
    time.sleep(60)  # never submits; the job is aborted by rank 0's exit handler long before


if __name__ == "__main__":
    name = sys.argv[1]
    if name.startswith("mismatch_"):
        scenario_mismatch(name.removeprefix("mismatch_"))
    else:
        globals()[f"scenario_{name}"]()
    print(f"OK {WORLD.rank}", flush=True)
