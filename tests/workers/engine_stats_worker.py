"""MPI worker for the engine's counters and bucket records, grouped all-reduces, and the cost model's logged,
reproducible decisions: `python engine_stats_worker.py SCENARIO`. Prints 'OK <rank>' per rank on success. Run
by tests/test_engine_stats.py."""
from __future__ import annotations

import logging
import sys
import time

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt
from neptune_rt import codecs

WORLD = MPI.COMM_WORLD
COUNT = 120000  # float32 values: divisible by 2..5, so each ring chunk is exactly S/n


def delta(after: dict, before: dict) -> dict:
    out = {k: after[k] - before[k] for k in after if not isinstance(after[k], dict)}
    for key in ("codecs", "codec_bytes"):  # per codec: buckets, raw bytes
        changed = {c: after[key].get(c, 0) - before[key].get(c, 0) for c in after[key]}
        out[key] = {c: v for c, v in changed.items() if v}
    return out


def scenario_stats() -> None:
    """Known workload, counted independently: K dense buckets of S bytes send 2(n-1)/n S each (ring), a group
    of three travels as one bucket, and an int8 bucket sends about a quarter of the dense bytes."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    nrt.bucket_records(clear=True)
    before = nrt.stats()
    t_start = time.monotonic()
    K, S = 4, COUNT * 4
    for k in range(K):  # one at a time: each its own bucket
        got = nrt.allreduce(np.full(COUNT, float(r + k), np.float32), name=f"dense{k}")
        assert np.all(got == sum(q + k for q in range(n))), k
    parts = [np.full(COUNT // 3, float(r + i), np.float32) for i in range(3)]
    handles = nrt.grouped_allreduce_async(parts, names=["g0", "g1", "g2"])
    for i, h in enumerate(handles):
        assert np.all(h.wait() == sum(q + i for q in range(n)))
    x = np.random.default_rng(r).standard_normal(COUNT).astype(np.float32)
    h8 = nrt.allreduce_async(x, name="q8", codec="int8", adaptive=False)
    h8.wait()
    t_end = time.monotonic()
    d = delta(nrt.stats(), before)

    ring = 2 * (n - 1) * S // n  # bytes one rank sends in a ring all-reduce of S bytes (exact: S/n is whole)
    assert d["buckets"] == K + 2, d
    assert d["tensors"] == K + 3 + 1, d
    assert d["bytes_raw"] == K * S + S + S, d
    int8_payload = codecs.payload_bytes("int8", COUNT)
    if n == 1:
        assert d["bytes_wire"] == 0, d
        assert d["codecs"] == {"none": K + 2}, d  # one rank: the exact value, nothing travels
        assert d["codec_bytes"] == {"none": K * S + 2 * S} and d["bytes_encoded"] == d["bytes_raw"], d
    else:
        assert d["codecs"] == {"none": K + 1, "int8": 1}, d
        assert d["codec_bytes"] == {"none": K * S + S, "int8": S}, d
        # Encoded: dense buckets as they are, the int8 bucket as its payload (whatever the ring sent of it).
        assert d["bytes_encoded"] == K * S + S + int8_payload, (d, int8_payload)
        assert d["bytes_wire"] == K * ring + ring + h8.wire_bytes, (d, ring, h8.wire_bytes)
        # int8 payload: 1 byte per value + a 4-byte scale per 256-value block + headers, instead of 4 bytes
        payload_ratio = codecs.payload_bytes("int8", COUNT) / S
        assert payload_ratio * ring <= h8.wire_bytes <= 1.05 * payload_ratio * ring, (h8.wire_bytes, ring)
    for key in ("negotiate_s", "encode_s", "wire_s", "decode_s", "wait_s"):
        assert 0 <= d[key] <= (t_end - t_start) * 3, (key, d)  # seconds of this thread and the engine's
    assert d["wait_s"] > 0 and (n == 1 or d["wire_s"] > 0), d

    recs = nrt.bucket_records()  # clears
    assert len(recs) == K + 2, recs
    assert [x["tensors"] for x in recs] == [1] * K + [3, 1], recs
    assert [x["codec"] for x in recs] == ["none"] * (K + 1) + ["int8" if n > 1 else "none"], recs
    assert sum(x["bytes_wire"] for x in recs) == d["bytes_wire"]
    assert sum(x["bytes_raw"] for x in recs) == d["bytes_raw"]
    assert [x["bytes_encoded"] for x in recs] == [S] * (K + 1) + [int8_payload if n > 1 else S], recs
    for prev, rec in zip(recs, recs[1:]):
        assert prev["start"] <= rec["start"]
    for rec in recs:
        assert t_start <= rec["start"] <= t_end, (t_start, rec, t_end)  # time.monotonic()'s clock
        assert rec["encode_s"] + rec["wire_s"] + rec["decode_s"] <= t_end - t_start
    assert abs(sum(x["wire_s"] for x in recs) - d["wire_s"]) < 1e-3
    assert nrt.bucket_records() == []
    # A compressed bucket of fp16 values: encoded is the int8 payload where int8 ran, the raw bytes where the bucket
    # went dense (on one rank always), never its fp32 work buffer's size.
    before = nrt.stats()
    x16 = np.random.default_rng(r).standard_normal(COUNT).astype(np.float16)
    nrt.allreduce(x16, name="q16", codec="int8", adaptive=False)
    d16 = delta(nrt.stats(), before)
    want = int8_payload if n > 1 else x16.nbytes
    assert d16["bytes_raw"] == x16.nbytes and d16["bytes_encoded"] == want, (d16, want)
    nrt.shutdown()


def scenario_groups() -> None:
    """Grouped all-reduces against numpy, every dtype family and op, with rank-dependent submission delays;
    a grouped int8 result is bitwise identical on every rank and across repeated identical groups."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    rng = np.random.default_rng(r)
    for dtype in ["float32", "float64", "int32"]:
        for op in ["sum", "max", "average"]:
            xs = [rng.integers(-50, 50, size=s).astype(dtype) for s in (1, 17, 5000, 70000)]
            allx = WORLD.allgather(xs)
            time.sleep(0.01 * r)
            got = nrt.grouped_allreduce(xs, names=[f"{dtype}.{op}.{i}" for i in range(len(xs))], op=op)
            for i, g in enumerate(got):
                stack = np.stack([a[i] for a in allx]).astype(np.float64)
                ref = {"sum": stack.sum(0), "max": stack.max(0), "average": stack.mean(0)}[op]
                if dtype == "int32" and op == "average":
                    ref = np.trunc(ref)
                assert np.allclose(g, ref.astype(dtype), atol=1e-6 if dtype != "float32" else 1e-4), (dtype, op, i)
    x = [np.random.default_rng(100 + r + i).standard_normal(40000 + i).astype(np.float32) for i in range(5)]
    # int8 on a group: ranks agree bitwise, and the result is within int8's error of the exact sum.
    first = None
    for rep in range(2):
        time.sleep(0.02 * ((r + rep) % 2))
        got = nrt.grouped_allreduce(x, names=[f"q{rep}.{i}" for i in range(5)], codec="int8", adaptive=False)
        flat = np.concatenate(got)
        allr = WORLD.allgather(flat)
        assert all(np.array_equal(allr[0], a) for a in allr), "ranks differ"
        exact = np.sum([np.concatenate(v) for v in WORLD.allgather(x)], axis=0, dtype=np.float64)
        assert np.abs(flat - exact).max() <= 0.02 * np.abs(exact).max(), "int8 error out of bound"
        first = flat if first is None else first
    # Fresh names start from zero residuals and the same bucket (the group): bitwise the same result again.
    assert np.array_equal(first, flat)
    if n > 1:  # a member whose shape differs between ranks fails, and takes its whole group down with it
        hs = nrt.grouped_allreduce_async([np.ones(10), np.ones(5 + (r == 1))], names=["ok_member", "bad_member"])
        errors = []
        for h in hs:
            try:
                h.wait(timeout=60)
            except RuntimeError as err:
                errors.append(str(err))
        assert len(errors) == 2 and "bad_member" in errors[0] and "bad_member" in errors[1], errors
        assert "grouped with a tensor that failed" in errors[0] and "different arguments" in errors[1], errors
        assert np.all(nrt.allreduce(np.ones(3), name="after_bad_group") == n)
    nrt.shutdown()


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def scenario_cost_model_log() -> None:
    """Adaptive int8: the probe and each bucket shape's decision are logged once at INFO (with the figures);
    NEPTUNE_RT_DETERMINISTIC=1 (set by the test) decides by size alone, with no probe."""
    import os
    deterministic = os.environ.get("NEPTUNE_RT_DETERMINISTIC") == "1"
    sink = Lines()
    logging.getLogger("neptune_rt").addHandler(sink)
    logging.getLogger("neptune_rt").setLevel(logging.INFO)
    nrt.init()
    n = nrt.size()
    used = []
    for step in range(3):
        for count in (300000, 1000):
            h = nrt.allreduce_async(np.ones(count, np.float32), name=f"w{count}.{step}", codec="int8")
            h.wait()
            used.append((count, h.codec_used))
    nrt.barrier()
    time.sleep(0.2)  # log lines are delivered on the completion thread
    decisions = [ln for ln in sink.lines if "goes" in ln]
    probes = [ln for ln in sink.lines if "cost model probed" in ln]
    if n > 1:
        assert len(decisions) == 1, sink.lines  # one shape reaches the cost model (1000 values go eager)
        assert "300000 values" in decisions[0], decisions
        assert len({c for k, c in used if k == 300000}) == 1, used  # the same answer every step
        if deterministic:
            assert probes == [] and "NEPTUNE_RT_DETERMINISTIC" in decisions[0], sink.lines
            assert all(c == "int8" for k, c in used if k == 300000), used
            assert "deterministic" in nrt.cost_model()
        else:
            assert len(probes) == 1 and "GB/s" in probes[0], sink.lines
            assert "predicted dense" in decisions[0] and "ms" in decisions[0], decisions
        assert all(c == "none" for k, c in used if k == 1000), used
    nrt.shutdown()


if __name__ == "__main__":
    globals()[f"scenario_{sys.argv[1]}"]()
    print(f"OK {WORLD.rank}", flush=True)
