"""MPI worker for tests/test_residuals.py: the engine's error-feedback residuals under real mpirun.

Scenarios: `weights` (per-rank weights that change mid-run, checked bitwise against a numpy two-phase reference
that keeps residuals unweighted), `roundtrip` (export mid-run, import into a fresh engine, continue: bitwise the
uninterrupted run), `keys` ((name, codec) keys, release, unnamed calls, size mismatch, import while in flight,
memory bounds, shutdown). Every rank prints "OK rank <r>"; any failure aborts every rank.
"""
from __future__ import annotations

import sys
import traceback
import warnings

import numpy as np
from mpi4py import MPI

import neptune_rt as nrt
from neptune_rt.codecs import reference as ref

WORLD = MPI.COMM_WORLD
BLOCK = 64        # NEPTUNE_RT_CODEC_BLOCK in tests/test_residuals.py
SEGMENT = 1024    # NEPTUNE_RT_SEGMENT_BYTES: 256-value segments, so chunks hold several


def grad(seed: int, rank: int, count: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed * 1009 + rank)
    return (rng.standard_normal(count) * rng.uniform(0.5, 4.0)).astype(dtype)


# ---- numpy reference of one engine call (one tensor per bucket, two-phase, round to nearest) ----
def segments(count: int, n: int) -> list[list[tuple[int, int]]]:
    """Per chunk (splitEvenly), its (offset, length) segments of SEGMENT // 4 values (whole blocks)."""
    base, extra = divmod(count, n)
    seg = max(BLOCK, SEGMENT // 4 // BLOCK * BLOCK)
    out, pos = [], 0
    for c in range(n):
        ln = base + (1 if c < extra else 0)
        out.append([(pos + k, min(seg, ln - k)) for k in range(0, ln, seg)])
        pos += ln
    return out


class Reference:
    """Every rank's residuals, unweighted, as the engine should keep them."""

    def __init__(self, count: int, n: int):
        self.count, self.n = count, n
        self.segs = segments(count, n)
        self.own = [np.zeros(count, np.float32) for _ in range(n)]
        self.reduced = [np.zeros(sum(ln for _, ln in s), np.float32) for s in self.segs]

    def step(self, codec: str, grads: list[np.ndarray], weights: list[float], op: str) -> np.ndarray:
        n = self.n
        srcs, slots = [], []
        for i in range(n):
            g, w = grads[i].astype(np.float32), np.float32(weights[i])
            if w == 0:
                self.own[i] += g  # nothing of it is sent: r' = r + g
                slots.append(np.zeros(self.count, np.float32))
            else:
                slots.append(self.own[i] * w)
            srcs.append(g * w)
        payloads = [[[ref.encode(codec, srcs[i][o:o + ln], slots[i][o:o + ln], block=BLOCK) for o, ln in segs]
                     for segs in self.segs] for i in range(n)]
        result = np.empty(self.count, np.float32)
        for c, segs in enumerate(self.segs):
            base = segs[0][0] if segs else 0
            for k, (o, ln) in enumerate(segs):
                acc = ref.decode(payloads[c][c][k])  # the owner's own contribution first, then c-1, c-2, ...
                for d in range(1, n):
                    acc = acc + ref.decode(payloads[(c - d) % n][c][k])
                p2 = ref.encode(codec, acc, self.reduced[c][o - base:o - base + ln], block=BLOCK)
                result[o:o + ln] = ref.decode(p2)
        for i in range(n):
            w = np.float32(weights[i])
            if w != 0:
                self.own[i] = slots[i] / w
        if op == "average":
            result = result * np.float32(1.0 / n)
        return result

    def exported(self, rank: int) -> np.ndarray:
        """What export_residuals should return for this rank: (own, reduced padded to the tensor)."""
        reduced = np.zeros(self.count, np.float32)
        o = self.segs[rank][0][0] if self.segs[rank] else 0
        reduced[o:o + self.reduced[rank].size] = self.reduced[rank]
        return np.stack([self.own[rank], reduced])


def scenario_weights() -> None:
    """Weights 1 for three steps, then per-rank weights that change twice (one rank at 0 for a while): results
    and residuals bitwise equal to the unweighted reference."""
    nrt.init()
    n, r = nrt.size(), nrt.rank()
    schedule = [[1.0] * n] * 3 + [[0.5 + 0.1 * i for i in range(n)]] * 3 + \
               [[0.2 + 0.3 * ((i + 1) % n) for i in range(n)]] * 3 + [[0.0] + [0.7] * (n - 1)] * 2 + \
               [[0.25] * n] * 2
    tensors = [("w.f32.int8", "int8", 1000, np.float32, "sum"), ("w.f64.onebit", "onebit", 777, np.float64, "sum"),
               ("w.f32.int4", "int4", 1500, np.float32, "average")]
    refs = {name: Reference(count, n) for name, _, count, _, _ in tensors}
    for step, weights in enumerate(schedule):
        for name, codec, count, dtype, op in tensors:
            grads = [grad(step, i, count, dtype) for i in range(n)]
            got = nrt.allreduce(grads[r], name=name, codec=codec, adaptive=False, op=op, prescale=weights[r])
            want = refs[name].step(codec, grads, weights, op).astype(dtype)
            if not np.array_equal(got, want):
                bad = np.nonzero(got != want)[0]
                raise AssertionError(f"rank {r} step {step} {name} (weights {weights}): {bad.size} elements differ "
                                     f"from the unweighted reference, first {bad[0]}: {got[bad[0]]} != {want[bad[0]]}")
        state = nrt.engine.export_residuals()
        for name, codec, _, _, _ in tensors:
            want = refs[name].exported(r)
            if not np.array_equal(state[(name, codec)], want):
                raise AssertionError(f"rank {r} step {step} {name}: exported residual differs from the reference")
    nrt.shutdown()


def run_steps(first: int, last: int, results: dict) -> None:
    n, r = nrt.size(), nrt.rank()
    for step in range(first, last):
        w = 1.0 if step < 3 else 0.3 + 0.2 * ((r + step) % n)  # weights change from step 3 on
        results[(step, "a")] = nrt.allreduce(grad(step, r, 1000), name="a", codec="int8", adaptive=False,
                                             prescale=w)
        results[(step, "b")] = nrt.allreduce(grad(step, r, 777, np.float64), name="b", codec="onebit",
                                             adaptive=False, prescale=w)
        results[(step, "c")] = nrt.allreduce(grad(step, r, 5000), name="c", codec="int4", adaptive=False,
                                             op="average")


def scenario_roundtrip() -> None:
    """Export after step 5 of 10, import into a fresh engine, continue: bitwise the uninterrupted run. A
    fresh engine without the import must differ (the residuals matter)."""
    r, steps, cut = WORLD.rank, 10, 5
    whole: dict = {}
    nrt.init()
    run_steps(0, steps, whole)
    nrt.shutdown()

    resumed: dict = {}
    nrt.init()
    run_steps(0, cut, resumed)
    state = nrt.engine.export_residuals()
    assert sorted(state) == [("a", "int8"), ("b", "onebit"), ("c", "int4")], sorted(state)
    saved = {k: v.copy() for k, v in state.items()}
    nrt.shutdown()
    nrt.init()
    nrt.engine.import_residuals(saved)
    run_steps(cut, steps, resumed)
    nrt.shutdown()
    for key in whole:
        if not np.array_equal(whole[key], resumed[key]):
            raise AssertionError(f"rank {r}: step {key[0]} tensor {key[1]} differs after export/import")

    fresh: dict = {}
    nrt.init()
    run_steps(cut, steps, fresh)
    nrt.shutdown()
    if all(np.array_equal(whole[(cut, t)], fresh[(cut, t)]) for t in "abc"):
        raise AssertionError(f"rank {r}: resuming without the residuals gave the same results: the test is blind")


def scenario_keys() -> None:
    nrt.init()
    r = nrt.rank()
    eng = nrt.engine._engine
    x = grad(0, r, 3000)

    # (name, codec): compressing a name with another codec frees the old residual and starts from zero.
    nrt.allreduce(x, name="k", codec="int8", adaptive=False)
    assert list(nrt.engine.export_residuals()) == [("k", "int8")], nrt.engine.export_residuals().keys()
    nrt.allreduce(x, name="k", codec="onebit", adaptive=False)
    nrt.allreduce(x, name="k.fresh", codec="onebit", adaptive=False)
    state = nrt.engine.export_residuals()
    assert sorted(state) == [("k", "onebit"), ("k.fresh", "onebit")], sorted(state)
    assert np.array_equal(state[("k", "onebit")], state[("k.fresh", "onebit")]), "int8's residual leaked into onebit"

    # release(name) frees it; shutdown frees everything.
    nrt.engine.release("k")
    nrt.engine.release("k.fresh")
    assert nrt.engine.export_residuals() == {} and eng.residual_bytes == 0, eng.residual_bytes

    # Unnamed compressed calls: one warning, no residual, however many calls.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(20):
            nrt.allreduce(x, codec="int8", adaptive=False)
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "without a name" in msgs[0], msgs
    assert eng.residual_bytes == 0 and nrt.engine.export_residuals() == {}, eng.residual_bytes

    # Memory stays at one residual per name (plus the reduced part) however the tensors are bucketed.
    sizes = {"m.0": 3000, "m.1": 1000, "m.2": 257}
    for step in range(30):
        handles = [nrt.allreduce_async(grad(step, r, c), name=name, codec="int8", adaptive=False)
                   for name, c in sizes.items()]
        for h in handles:
            h.wait()
    assert sorted(nrt.engine.export_residuals()) == [(k, "int8") for k in sorted(sizes)]
    limit = 2 * 4 * sum(sizes.values())
    assert 4 * sum(sizes.values()) <= eng.residual_bytes <= limit, (eng.residual_bytes, limit)

    # Import refuses while a compressed all-reduce is in flight (rank 0 submits; the others wait for it).
    if r == 0:
        h = nrt.allreduce_async(x, name="inflight", codec="int8", adaptive=False)
        try:
            nrt.engine.import_residuals({})
        except RuntimeError as e:
            assert "in flight" in str(e), e
        else:
            raise AssertionError("import_residuals accepted while a compressed all-reduce was in flight")
    WORLD.Barrier()
    if r != 0:
        h = nrt.allreduce_async(x, name="inflight", codec="int8", adaptive=False)
    h.wait()
    for bad in ({"k": np.zeros(3, np.float32)}, {("k", "int8"): np.zeros((3, 3), np.float32)},
                {("k", "int8"): np.zeros(3, np.int32)}):
        try:
            nrt.engine.import_residuals(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"import_residuals accepted {bad!r}")
    try:
        nrt.engine.import_residuals({("k", "zip"): np.zeros(3, np.float32)})
    except ValueError as e:
        assert "zip" in str(e), e
    else:
        raise AssertionError("import_residuals accepted codec 'zip'")

    # A size mismatch at first use discards that residual (with a warning on stderr naming the tensor).
    nrt.engine.import_residuals({("s", "int8"): np.full(10, 5.0, np.float32)})
    got = nrt.allreduce(x, name="s", codec="int8", adaptive=False)
    fresh = nrt.allreduce(x, name="s.fresh", codec="int8", adaptive=False)
    assert np.array_equal(got, fresh), "a mismatched imported residual was used"
    assert eng.residual_bytes > 0
    nrt.shutdown()
    assert eng.residual_bytes == 0, f"shutdown kept {eng.residual_bytes} bytes of residuals"


def main() -> None:
    scenario = sys.argv[1]
    try:
        {"weights": scenario_weights, "roundtrip": scenario_roundtrip, "keys": scenario_keys}[scenario]()
    except Exception:  # noqa: BLE001 - any failure must take every rank down, never hang them
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        WORLD.Abort(3)
    print(f"OK rank {WORLD.rank}")


if __name__ == "__main__":
    main()
