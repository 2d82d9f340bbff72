"""OneBitAdam on 4 real MPI ranks (workers/onebit_adam_worker.py): a 2,000-step quadratic against dense Adam with
bounded worker and server errors, and state_dict round trips that continue bit for bit. OneBitLamb
(workers/onebit_lamb_worker.py): warm-up steps against LAMB written out, a round trip, load_digits vs dense LAMB."""
import pytest

from mpi_helpers import assert_ok, assert_part_passed, run_workers


def test_onebit_adam_quadratic_and_checkpoints() -> None:
    proc = run_workers("onebit_adam_worker.py", 4, timeout=240)
    assert_ok(proc, 4)
    print([line for line in proc.stdout.splitlines() if line.startswith("QUAD")])


def _has_digits() -> bool:
    """load_digits' data ships with scikit-learn (read without importing it)."""
    import importlib.util
    return importlib.util.find_spec("sklearn") is not None


@pytest.fixture(scope="module")
def onebit_lamb_run():
    """The reference part and (with scikit-learn's digits) the digits training share one 4-rank launch."""
    parts = ["reference"] + (["digits", "lamb", "onebitlamb"] if _has_digits() else [])
    return run_workers("onebit_lamb_worker.py", 4, *parts, timeout=360)


def test_onebit_lamb_warmup_is_lamb_and_checkpoints_continue(onebit_lamb_run) -> None:
    assert_part_passed(onebit_lamb_run, "PASSED reference rank ", 4)
    if not _has_digits():  # the launch's only part: it must also end cleanly (the digits test checks it)
        assert_ok(onebit_lamb_run, 4)


def test_onebit_lamb_trains_digits_within_one_point_of_dense_lamb(onebit_lamb_run) -> None:
    if not _has_digits():
        pytest.skip("needs scikit-learn (its digits data)")
    proc = onebit_lamb_run
    assert_ok(proc, 4)
    print(proc.stdout)
    rows = {r[1]: r for r in (line.split() for line in proc.stdout.splitlines()) if r[0] == "ACC"}
    assert rows["lamb"][4] == "None" and rows["onebitlamb"][4] != "None", rows  # dense vs frozen, then onebit
    dense, ours = float(rows["lamb"][2]), float(rows["onebitlamb"][2])
    assert dense > 90 and ours >= dense - 1.0, rows
