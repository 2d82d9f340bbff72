"""The neptune_rt DDP communication hook against DDP's own hooks on 4 real MPI ranks."""
from _launch import assert_ok, run_workers


def test_ddp_hook_matches_ddp_default_hooks() -> None:
    assert_ok(run_workers("ddp_hook_worker.py", 4), 4)
