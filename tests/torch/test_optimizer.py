"""DistributedOptimizer against torch DDP (gloo) on 4 real MPI ranks; see workers/optimizer_worker.py."""
from mpi_helpers import assert_ok, run_workers


def test_distributed_optimizer_matches_ddp() -> None:
    assert_ok(run_workers("optimizer_worker.py", 4), 4)


def test_state_dict_carries_residuals_and_resumes_bitwise() -> None:
    # int8 (one residual per tensor) and onebit (the two-phase algorithm's second residual too, and SGD's
    # momentum kept locally): one job for both, to keep the test short.
    assert_ok(run_workers("optimizer_state_worker.py", 3, "int8", "onebit"), 3)
