"""The background engine under real mpirun: results vs numpy/mpi4py for every dtype and op, concurrent
named operations in different orders, fusion and eager paths, sub-communicators, join, and failures
(mismatches, stalls) that must end in errors on every rank, never in a hang; silent ranks, set-up and
shut-down failures are in test_failures.py."""
import time

import pytest

from mpi_helpers import assert_ok, run_mpi


# At 4 ranks (a power of two of at least 4) auto takes halving-doubling for the buckets above 256 KiB. torch tensors
# and bfloat16 (no MPI type: our algorithms) at 1-3 ranks only, as `import torch` costs each rank seconds: 2 ranks
# are a power of two, 3 are not.
@pytest.mark.parametrize("np_,scenario", [(1, "api"), (2, "api"), (3, "api"), (4, "api_numpy"), (5, "api_numpy")])
def test_engine_api(np_, scenario):
    assert_ok(run_mpi("engine_worker.py", np_, scenario, timeout=300), np_)


def test_engine_small_fusion_and_no_eager():
    # Tiny fusion buckets and no eager path: every tensor goes through negotiated buckets.
    # Without torch tensors and bfloat16 (test_engine_api has them, at default settings): settings vary here.
    env = {"NEPTUNE_RT_FUSION_BYTES": "4K", "NEPTUNE_RT_EAGER_BYTES": "0", "NEPTUNE_RT_SEGMENT_BYTES": "1K"}
    assert_ok(run_mpi("engine_worker.py", 3, "api_numpy", timeout=300, env=env), 3)


@pytest.mark.parametrize("np_,path", [(2, "default"), (3, "default"), (4, "ours")])
def test_results_bitwise_equal_on_every_rank(np_, path):
    # NaN, +0/-0 and NaN payloads, where min, max and even sum depend on the operands' order. "ours": no eager sums
    # and no MPI_Iallreduce, so the small sizes take our recursive doubling.
    env = {"NEPTUNE_RT_EAGER_BYTES": "0", "NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES": "0"} if path == "ours" else {}
    assert_ok(run_mpi("engine_worker.py", np_, "bitwise", timeout=300, env=env), np_)


def test_engine_api_on_our_ring_as_asked():
    # NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES=0: dense buckets above 64 KB take our algorithm instead of MPI_Iallreduce, and
    # NEPTUNE_RT_ALLREDUCE_ALGORITHM=ring the ring where auto would take halving-doubling (test_engine_api[4-api_numpy]
    # runs auto); the worker checks the bucket records say so. Without torch: bfloat16 and torch tensors are in
    # test_engine_api.
    env = {"NEPTUNE_RT_NATIVE_ALLREDUCE_BYTES": "0", "NEPTUNE_RT_ALLREDUCE_ALGORITHM": "ring"}
    assert_ok(run_mpi("engine_worker.py", 4, "api_numpy", timeout=300, env=env), 4)


@pytest.mark.parametrize("np_,algorithm", [(1, "two_phase"), (3, "two_phase"), (4, "ring"), (5, "two_phase")])
def test_codecs_through_the_engine(np_, algorithm):
    env = {"NEPTUNE_RT_COMPRESSED_ALGORITHM": algorithm, "NEPTUNE_RT_FUSION_BYTES": "64K"}
    assert_ok(run_mpi("engine_worker.py", np_, "codecs", timeout=300, env=env), np_)


def test_sub_communicator():
    assert_ok(run_mpi("engine_worker.py", 4, "subcomm"), 4)


@pytest.mark.parametrize("kind", ["shape", "dtype", "op", "name"])
def test_mismatch_fails_on_every_rank(kind):
    env = {"NEPTUNE_RT_TIMEOUT_SECONDS": "4", "NEPTUNE_RT_STALL_WARNING_SECONDS": "1"}
    proc = run_mpi("engine_worker.py", 3, f"mismatch_{kind}", timeout=60, env=env)
    assert_ok(proc, 3)


def test_bad_arguments_raise():
    assert_ok(run_mpi("engine_worker.py", 2, "errors"), 2)


@pytest.mark.parametrize("np_", [2, 4])
def test_join_with_uneven_batches(np_):
    assert_ok(run_mpi("engine_worker.py", np_, "join"), np_)


def test_missing_rank_times_out_instead_of_hanging():
    start = time.time()
    proc = run_mpi("engine_worker.py", 2, "timeout", timeout=60, env={"NEPTUNE_RT_TIMEOUT_SECONDS": "3"})
    assert "TIMEOUT-OK" in proc.stdout, proc.stdout + proc.stderr
    assert time.time() - start < 45


def test_stochastic_rounding_does_not_depend_on_bucket_order():
    env = {"NEPTUNE_RT_ROUNDING": "stochastic", "NEPTUNE_RT_SEED": "3"}
    assert_ok(run_mpi("engine_worker.py", 3, "stream_order", timeout=120, env=env), 3)
