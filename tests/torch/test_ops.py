"""The Horovod-style collectives of neptune_rt.torch against gloo and closed forms, on 4 real MPI ranks."""
from mpi_helpers import assert_ok, run_workers


def test_collectives_match_gloo() -> None:
    assert_ok(run_workers("ops_worker.py", 4), 4)
