"""OneBitAdam on 4 real MPI ranks (workers/onebit_adam_worker.py): a 2,000-step quadratic against dense Adam with
bounded worker and server errors, and state_dict round trips that continue bit for bit. OneBitLamb
(workers/onebit_lamb_worker.py): warm-up steps against LAMB written out, a round trip, load_digits vs dense LAMB."""
import pytest

from mpi_helpers import assert_ok, run_workers


def test_onebit_adam_quadratic_and_checkpoints() -> None:
    proc = run_workers("onebit_adam_worker.py", 4, timeout=240)
    assert_ok(proc, 4)
    print([line for line in proc.stdout.splitlines() if line.startswith("QUAD")])


@pytest.fixture(scope="module")
def onebit_lamb_run():
    """The reference part and the digits training share one 4-rank launch."""
    return run_workers("onebit_lamb_worker.py", 4, "reference", "digits", "lamb", "onebitlamb", timeout=360)


def test_onebit_lamb_warmup_is_lamb_and_checkpoints_continue(onebit_lamb_run) -> None:
    passed = [line for line in onebit_lamb_run.stdout.splitlines() if line.startswith("PASSED reference rank ")]
    assert len(passed) == 4, onebit_lamb_run.output[-8000:]


def test_onebit_lamb_trains_digits_within_one_point_of_dense_lamb(onebit_lamb_run) -> None:
    proc = onebit_lamb_run
    assert_ok(proc, 4)
    print(proc.stdout)
    rows = {r[1]: r for r in (line.split() for line in proc.stdout.splitlines()) if r[0] == "ACC"}
    assert rows["lamb"][4] == "None" and rows["onebitlamb"][4] != "None", rows  # dense vs frozen, then onebit
    dense, ours = float(rows["lamb"][2]), float(rows["onebitlamb"][2])
    assert dense > 90 and ours >= dense - 1.0, rows
