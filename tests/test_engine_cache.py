"""The engine's response cache (csrc/engine/response_cache.h): hits and misses under every change of a tensor's
key, eviction at a small capacity, capacity 0, ranks submitting in different orders, mismatches, join, barriers
and stall reports on cached tensors, ranks with different capacities. Real mpirun;
workers/engine_cache_worker.py."""
import pytest

from mpi_helpers import assert_ok, run_mpi

FAIL_FAST = {"NEPTUNE_RT_TIMEOUT_SECONDS": "4", "NEPTUNE_RT_STALL_WARNING_SECONDS": "1"}


@pytest.mark.parametrize("np_", [2, 4])
def test_steady_state_runs_from_the_cache_in_any_order(np_):
    assert_ok(run_mpi("engine_cache_worker.py", np_, "hits", timeout=120), np_)


def test_every_change_of_the_key_invalidates():
    assert_ok(run_mpi("engine_cache_worker.py", 3, "changes", timeout=120), 3)


def test_least_recently_used_slots_are_reused():
    assert_ok(run_mpi("engine_cache_worker.py", 2, "eviction", timeout=120,
                      env={"NEPTUNE_RT_CACHE_CAPACITY": "2"}), 2)


def test_capacity_zero_disables_the_cache():
    assert_ok(run_mpi("engine_cache_worker.py", 3, "capacity0", timeout=120,
                      env={"NEPTUNE_RT_CACHE_CAPACITY": "0"}), 3)


def test_a_cached_tensor_changing_shape_on_one_rank_fails_everywhere():
    proc = run_mpi("engine_cache_worker.py", 3, "mismatch", timeout=60, env=FAIL_FAST)
    assert_ok(proc, 3)
    assert proc.stdout.count("was submitted with different arguments on different ranks") == 3, proc.stdout


def test_join_and_barriers_with_cached_tensors():
    assert_ok(run_mpi("engine_cache_worker.py", 3, "join", timeout=120), 3)


def test_stall_warning_names_the_missing_rank_of_a_cached_tensor():
    proc = run_mpi("engine_cache_worker.py", 3, "stall", timeout=60, env=FAIL_FAST)
    assert_ok(proc, 3)
    assert "tensor 'w' was submitted by ranks [0, 1] but not by ranks [2]" in proc.stderr, proc.stderr


def test_different_capacities_fail_on_every_rank():
    proc = run_mpi("engine_cache_worker.py", 2, "capacity_mismatch", timeout=60, env=FAIL_FAST)
    reported = sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("CAPACITY-MISMATCH-OK"))
    assert reported == ["0", "1"], proc.output[-6000:]
    assert proc.returncode != 0  # a failed engine ends the job through the exit handler's abort


def test_different_dense_algorithms_fail_on_every_rank():
    # At 4 ranks auto means halving-doubling after MPI_Iallreduce up to 256 KiB; ring means MPI up to 1 MiB.
    proc = run_mpi("engine_cache_worker.py", 4, "algorithm_mismatch", timeout=60, env=FAIL_FAST)
    reported = sorted(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ALGORITHM-MISMATCH-OK"))
    assert reported == ["0", "1", "2", "3"], proc.output[-6000:]
    assert proc.returncode != 0  # a failed engine ends the job through the exit handler's abort
