"""broadcast_parameters, broadcast_optimizer_state, broadcast/allgather_object and join on 4 real MPI ranks."""
from mpi_helpers import assert_ok, run_workers


def test_broadcasts_make_ranks_identical_and_join_handles_uneven_batches() -> None:
    assert_ok(run_workers("broadcast_join_worker.py", 4), 4)
