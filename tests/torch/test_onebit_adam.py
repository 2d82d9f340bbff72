"""OneBitAdam on 4 real MPI ranks (workers/onebit_adam_worker.py): a 2,000-step quadratic against dense Adam with
bounded worker and server errors, and state_dict round trips that continue bit for bit."""
from mpi_helpers import assert_ok, run_workers


def test_onebit_adam_quadratic_and_checkpoints() -> None:
    proc = run_workers("onebit_adam_worker.py", 4, timeout=240)
    assert_ok(proc, 4)
    print([line for line in proc.stdout.splitlines() if line.startswith("QUAD")])
