"""Cheap submission under real mpirun: GroupHandle results against mpi4py's MPI_Allreduce (numpy and torch CPU
buffers, in place and out of place, members on demand, callbacks, errors naming the tensor), groups of views of
one buffer (reduced where they lie), the synchronous grouped_allreduce_ driven by its caller, wait(drive=False)
that leaves the cycles to the engine thread, the plain-numpy fast path
of allreduce_async_, asynchronous work that completes with nobody waiting (the engine thread's drive window), and
asynchronous work waited on at once that stops waking the engine thread (caller-driven mode). Worker:
workers/engine_groups_worker.py."""
import pytest

from mpi_helpers import assert_ok, run_mpi


@pytest.mark.parametrize("np_", [1, 3])
def test_group_handle(np_):
    assert_ok(run_mpi("engine_groups_worker.py", np_, "group_handle", timeout=120), np_)


def test_numpy_fast_path():
    assert_ok(run_mpi("engine_groups_worker.py", 2, "fast_path", timeout=120), 2)


def test_grouped_views_of_one_buffer_reduce_in_place():
    assert_ok(run_mpi("engine_groups_worker.py", 4, "views", timeout=120), 4)


def test_synchronous_group_is_driven_by_its_caller():
    assert_ok(run_mpi("engine_groups_worker.py", 2, "sync_group", timeout=120,
                      env={"NEPTUNE_RT_DRIVE_WINDOW_US": "0"}), 2)


def test_passive_wait_hands_the_work_to_the_engine_thread_at_once():
    assert_ok(run_mpi("engine_groups_worker.py", 2, "passive_wait", timeout=120,
                      env={"NEPTUNE_RT_DRIVE_WINDOW_US": "500000"}), 2)


@pytest.mark.parametrize("np_", [1, 4])
def test_asynchronous_work_completes_without_a_waiter(np_):
    assert_ok(run_mpi("engine_groups_worker.py", np_, "async_progress", timeout=120), np_)


def test_async_submissions_waited_at_once_stop_waking_the_engine_thread():
    assert_ok(run_mpi("engine_groups_worker.py", 2, "caller_driven", timeout=120), 2)
