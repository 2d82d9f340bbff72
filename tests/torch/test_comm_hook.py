"""The neptune_rt DDP communication hook against DDP's own hooks on 4 real MPI ranks."""
from mpi_helpers import assert_ok, run_workers


def test_ddp_hook_matches_ddp_default_hooks() -> None:
    assert_ok(run_workers("ddp_hook_worker.py", 4), 4)
