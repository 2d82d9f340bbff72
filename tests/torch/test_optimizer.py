"""DistributedOptimizer against torch DDP (gloo) on 4 real MPI ranks; see workers/optimizer_worker.py."""
from mpi_helpers import assert_ok, run_workers


def test_distributed_optimizer_matches_ddp() -> None:
    assert_ok(run_workers("optimizer_worker.py", 4), 4)
