"""DistributedOptimizer against torch DDP (gloo) on 4 real MPI ranks; see workers/optimizer_worker.py."""
import pytest

from mpi_helpers import assert_ok, run_workers


def test_distributed_optimizer_matches_ddp() -> None:
    assert_ok(run_workers("optimizer_worker.py", 4), 4)


@pytest.mark.parametrize("codec", ["int8", "onebit"])
def test_state_dict_carries_residuals_and_resumes_bitwise(codec: str) -> None:
    assert_ok(run_workers("optimizer_state_worker.py", 3, codec), 3)
