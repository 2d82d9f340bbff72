"""OneBitAdam on 4 real MPI ranks (workers/onebit_adam_worker.py): a 2,000-step quadratic against dense Adam with
bounded worker and server errors, and state_dict round trips that continue bit for bit. OneBitLamb
(workers/onebit_lamb_worker.py): warm-up steps against LAMB written out, a round trip, load_digits vs dense LAMB."""
import pytest

from mpi_helpers import assert_ok, run_workers


def test_onebit_adam_quadratic_and_checkpoints() -> None:
    proc = run_workers("onebit_adam_worker.py", 4, timeout=240)
    assert_ok(proc, 4)
    print([line for line in proc.stdout.splitlines() if line.startswith("QUAD")])


def test_onebit_lamb_warmup_is_lamb_and_checkpoints_continue() -> None:
    assert_ok(run_workers("onebit_lamb_worker.py", 4, "reference", timeout=120), 4)


def test_onebit_lamb_trains_digits_within_one_point_of_dense_lamb() -> None:
    pytest.importorskip("sklearn")
    proc = run_workers("onebit_lamb_worker.py", 4, "digits", "lamb", "onebitlamb", timeout=300)
    assert_ok(proc, 4)
    print(proc.stdout)
    rows = {r[1]: r for r in (line.split() for line in proc.stdout.splitlines()) if r[0] == "ACC"}
    assert rows["lamb"][4] == "None" and rows["onebitlamb"][4] != "None", rows  # dense vs frozen, then onebit
    dense, ours = float(rows["lamb"][2]), float(rows["onebitlamb"][2])
    assert dense > 90 and ours >= dense - 1.0, rows
