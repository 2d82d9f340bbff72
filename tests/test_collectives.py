"""Direct collectives under real mpirun: world sizes 1..5 sweep counts {0,1,7,1000,10007} and a large one (2^22 on
1-2 ranks; 2^20 on 3 and 5, still many segments a chunk, at less than half the time of 5 ranks sharing 2 cores),
every dtype and op, ring, recursive doubling and (power-of-two worlds) halving-doubling, single- and multi-segment
paths (tests/workers/collectives_worker.py)."""
import pytest

from mpi_helpers import assert_ok, run_mpi


# 4 ranks: the all-reduce alone below (halving-doubling), and test_engine.py through the engine
# (test_engine_api[4-api_numpy]); 5 covers both the fold of an odd rank and two doubling rounds, 3 a ring of odd length.
@pytest.mark.parametrize("np_", [1, 2, 3, 5])
def test_collectives_sweep(np_):
    big = 1 << 22 if np_ <= 2 else 1 << 20
    proc = run_mpi("collectives_worker.py", np_, str(big), timeout=400)
    assert_ok(proc, np_)


def test_halving_doubling_allreduce_at_4_ranks():
    # The dense all-reduce auto picks from 64 KiB to 4 MiB in a power-of-two world (halving_doubling.cc): every count,
    # dtype, op and segment size of the sweep, at 4 ranks (two halving steps), the all-reduce alone.
    proc = run_mpi("collectives_worker.py", 4, str(1 << 20), "allreduce", timeout=400)
    assert_ok(proc, 4)


def test_decision_function():
    from neptune_rt import _C
    limit = _C.RECURSIVE_DOUBLING_MAX_BYTES
    assert _C.choose_allreduce_algorithm(4096, 4) == "recursive_doubling"
    assert _C.choose_allreduce_algorithm(limit, 4) == "recursive_doubling"
    assert _C.choose_allreduce_algorithm(limit + 1, 4) == "halving_doubling"
    assert _C.choose_allreduce_algorithm(4 << 20, 8) == "halving_doubling"
    assert _C.choose_allreduce_algorithm((4 << 20) + 1, 8) == "ring"  # the ring pipelines across steps
    assert _C.choose_allreduce_algorithm(64 << 20, 2) == "ring"
    assert _C.choose_allreduce_algorithm(limit + 1, 2) == "ring"  # 2 ranks: one exchange either way, the ring pipelines
    assert _C.choose_allreduce_algorithm(1 << 20, 3) == "ring"  # not a power of two
    assert _C.choose_allreduce_algorithm(1 << 20, 6) == "ring"
    assert _C.choose_allreduce_algorithm(64 << 20, 5) == "ring"
    assert _C.choose_allreduce_algorithm(64 << 20, 6) == "ring"
    assert _C.choose_allreduce_algorithm(64 << 20, 1) == "recursive_doubling"  # nothing to move
