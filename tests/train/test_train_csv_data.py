"""The CSV-directory workload: loading and standardisation against a numpy reference, and every bad-input case
naming the file, row and column (in-process); then the same bad input through `neptune-rt train` under mpirun
(non-zero exit, one message, no hang, no run directory)."""
from pathlib import Path

import numpy as np
import pytest

from _cli import neptune
from neptune_rt.train.csv_data import load_csv_dir, write_csv_dir
from neptune_rt.train.datasets import DataError


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def _good(root: Path) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(30, 3)).round(3)
    labels = ["cat", "dog", "emu"] * 10
    _write(root / "train" / "a.csv", ["x0", "x1", "label", "x2"],
           [[r[0], r[1], lab, r[2]] for r, lab in zip(x[:20], labels[:20])])
    # second train file: same columns, another order
    _write(root / "train" / "b.csv", ["label", "x2", "x1", "x0"],
           [[lab, r[2], r[1], r[0]] for r, lab in zip(x[20:], labels[20:])])
    _write(root / "test" / "t.csv", ["x0", "x1", "x2", "label"], [[1, 2, 3, "dog"], [4, 5, 6, "emu"]])
    return x, labels


def test_loads_and_standardises_with_train_statistics(tmp_path):
    x, labels = _good(tmp_path)
    data = load_csv_dir(str(tmp_path))
    mean, std = x.mean(0), x.std(0)
    np.testing.assert_allclose(data.x_train, (x - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.x_test, (np.array([[1, 2, 3], [4, 5, 6]]) - mean) / std, rtol=1e-5)
    assert data.classes == ["cat", "dog", "emu"] and data.features == ["x0", "x1", "x2"]
    assert data.y_train.tolist() == [["cat", "dog", "emu"].index(lab) for lab in labels]
    assert data.y_test.tolist() == [1, 2]


def test_numeric_labels_fast_path(tmp_path):
    _write(tmp_path / "train" / "a.csv", ["f", "y"], [[1.5, 2], [2.5, 10], [3.5, 2]])
    _write(tmp_path / "test" / "a.csv", ["y", "f"], [[10, 0.5]])
    data = load_csv_dir(str(tmp_path), "y")
    assert data.classes == ["2", "10"] and data.y_train.tolist() == [0, 1, 0] and data.y_test.tolist() == [1]


BAD = {
    "non-numeric": (lambda r: _write(r / "train" / "a.csv", ["x0", "x1", "label", "x2"], [[1, 2, "a", 3],
                    [1, "oops", "b", 3]]), r"a\.csv, row 3, column 'x1': non-numeric cell 'oops'"),
    "empty cell": (lambda r: _write(r / "train" / "a.csv", ["x0", "x1", "label", "x2"], [[1, "", "a", 3]]),
                   r"a\.csv, row 2, column 'x1': non-numeric cell ''"),
    "short row": (lambda r: _write(r / "train" / "b.csv", ["label", "x2", "x1", "x0"], [["a", 1, 2]]),
                  r"b\.csv, row 2: 3 cells, but the header has 4 columns"),
    "inconsistent columns": (lambda r: _write(r / "train" / "b.csv", ["label", "x2", "x1", "z"], [["a", 1, 2, 3]]),
                             r"b\.csv: columns differ .*missing: \['x0'\], unexpected: \['z'\]"),
    "test lacks label": (lambda r: _write(r / "test" / "t.csv", ["x0", "x1", "x2"], [[1, 2, 3]]),
                         r"t\.csv: no label column 'label'"),
    "test lacks a column": (lambda r: _write(r / "test" / "t.csv", ["x0", "x1", "label"], [[1, 2, "dog"]]),
                            r"t\.csv: columns differ .*missing: \['x2'\]"),
    "unseen test label": (lambda r: _write(r / "test" / "t.csv", ["x0", "x1", "x2", "label"], [[1, 2, 3, "yak"]]),
                          r"test labels \['yak'\] never occur"),
    "empty train dir": (lambda r: [p.unlink() for p in (r / "train").glob("*.csv")], r"train holds no \*\.csv"),
    "missing test dir": (lambda r: [p.unlink() for p in (r / "test").glob("*")] and (r / "test").rmdir(),
                         r"missing directory .*test"),
    "empty file": (lambda r: (r / "train" / "b.csv").write_text(""), r"b\.csv: empty file"),
    "not finite": (lambda r: _write(r / "train" / "a.csv", ["x0", "x1", "label", "x2"], [[1, "inf", "a", 3]]),
                   r"a\.csv, row 2, column 'x1': 'inf' is not a finite number"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_named(tmp_path, case):
    _good(tmp_path)
    damage, match = BAD[case]
    damage(tmp_path)
    with pytest.raises(DataError, match=match):
        load_csv_dir(str(tmp_path))


def test_label_column_flag_and_missing_dir(tmp_path):
    _good(tmp_path)
    with pytest.raises(DataError, match=r"a\.csv: no label column 'target'.*--label-column"):
        load_csv_dir(str(tmp_path), "target")
    with pytest.raises(DataError, match="not a directory"):
        load_csv_dir(str(tmp_path / "nowhere"))


def test_make_csv_writes_a_loadable_directory(tmp_path):
    used, n_train, n_test = write_csv_dir(str(tmp_path / "d"), "digits", train_files=3)
    assert (used, n_train, n_test) == ("digits", 1437, 360)
    assert len(list((tmp_path / "d" / "train").glob("*.csv"))) == 3
    data = load_csv_dir(str(tmp_path / "d"))
    assert data.x_train.shape == (1437, 64) and data.num_classes == 10
    with pytest.raises(DataError, match="not empty"):
        write_csv_dir(str(tmp_path / "d"), "digits")


def test_cli_bad_csv_fails_every_rank_without_run_files(tmp_path):
    _good(tmp_path / "data")
    BAD["non-numeric"][0](tmp_path / "data")
    result = neptune(3, "train", "--data", f"csv:{tmp_path / 'data'}", "--run-dir", tmp_path / "run",
                     "--steps", "2", timeout=240)
    assert result.returncode != 0
    assert result.stderr.count("row 3, column 'x1': non-numeric cell 'oops'") == 1, result.output[-3000:]
    assert not (tmp_path / "run").exists()
