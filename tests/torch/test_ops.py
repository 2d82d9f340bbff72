"""The Horovod-style collectives of neptune_rt.torch against gloo, numpy and closed forms, on real MPI ranks."""
from mpi_helpers import assert_ok, run_workers


def test_collectives_match_gloo() -> None:
    assert_ok(run_workers("ops_worker.py", 4), 4)


def test_what_horovod_scripts_expect() -> None:
    """int16 and bool tensors, integer pre/post-scaling, join's last rank (joining in the order 2, 1, 0),
    the capability queries, None tensors, and the DDP hook's call counter (issue 8, items 8-12)."""
    assert_ok(run_workers("horovod_compat_worker.py", 3, timeout=240), 3)


def test_synchronous_allreduce_is_driven_by_its_caller() -> None:
    """allreduce_ / allreduce of torch tensors never wake the engine thread (window 0: a woken one takes the cycle)."""
    assert_ok(run_workers("sync_worker.py", 2, env={"NEPTUNE_RT_DRIVE_WINDOW_US": "0"}), 2)
