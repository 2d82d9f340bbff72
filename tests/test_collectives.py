"""Direct collectives under real mpirun: world sizes 1..5 sweep counts {0,1,7,1000,10007,2^22}, every dtype
and op, ring and recursive doubling, single- and multi-segment paths (tests/workers/collectives_worker.py)."""
import pytest

from mpi_helpers import assert_ok, run_mpi


# 4 ranks is left to the engine tests (test_engine.py runs the dense ring and recursive doubling at 4 through the
# engine); 5 covers both the fold of an odd rank and two doubling rounds, 3 a ring of odd length.
@pytest.mark.parametrize("np_", [1, 2, 3, 5])
def test_collectives_sweep(np_):
    proc = run_mpi("collectives_worker.py", np_, timeout=400)
    assert_ok(proc, np_)


def test_decision_function():
    from neptune_rt import _C
    limit = _C.RECURSIVE_DOUBLING_MAX_BYTES
    assert _C.choose_allreduce_algorithm(4096, 4) == "recursive_doubling"
    assert _C.choose_allreduce_algorithm(limit, 4) == "recursive_doubling"
    assert _C.choose_allreduce_algorithm(limit + 1, 4) == "ring"
    assert _C.choose_allreduce_algorithm(64 << 20, 5) == "ring"
    assert _C.choose_allreduce_algorithm(64 << 20, 1) == "recursive_doubling"  # nothing to move
