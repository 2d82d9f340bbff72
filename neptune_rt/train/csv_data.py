"""The CSV-directory workload (`--data csv:DIR`): DIR/train/*.csv and DIR/test/*.csv, one header row, the
label in a named column, every other column a numeric feature, standardised with train-set statistics.
`write_csv_dir` (`neptune-rt make-csv DIR`) writes such a directory from Fashion-MNIST or digits. Every bad
input names the file, row and column. Exercised by tests/train/test_train_csv_data.py.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from neptune_rt.train.datasets import DataError, Dataset

__all__ = ["load_csv_dir", "write_csv_dir"]


def _csv_files(root: Path, split: str) -> list[Path]:
    directory = root / split
    if not directory.is_dir():
        raise DataError(f"csv:{root}: missing directory {directory} (expected {root}/train/*.csv and "
                        f"{root}/test/*.csv; `neptune-rt make-csv {root}` writes an example)")
    files = sorted(directory.glob("*.csv"))
    if not files:
        raise DataError(f"csv:{root}: {directory} holds no *.csv files")
    return files


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        row = next(csv.reader(fh), None)
    if not row or all(not c.strip() for c in row):
        raise DataError(f"{path}: empty file (expected a header row of column names)")
    names = [c.strip() for c in row]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {dupes}")
    return names


def _parse_slow(path: Path, names: list[str], label_col: int) -> tuple[np.ndarray, list[str]]:
    """Cell by cell, to say exactly which row and column is wrong."""
    rows, labels = [], []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(names):
                raise DataError(f"{path}, row {line}: {len(row)} cells, but the header has {len(names)} columns")
            values = []
            for col, cell in enumerate(row):
                if col == label_col:
                    labels.append(cell.strip())
                    continue
                try:
                    value = float(cell)
                except ValueError:
                    raise DataError(f"{path}, row {line}, column '{names[col]}': non-numeric cell {cell!r} "
                                    f"(every column except the label must be numeric)") from None
                if not math.isfinite(value):
                    raise DataError(f"{path}, row {line}, column '{names[col]}': {cell!r} is not a finite number")
                values.append(value)
            rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), len(names) - 1), labels


def _parse(path: Path, names: list[str], label_col: int) -> tuple[np.ndarray, list[str]]:
    try:  # fast path: all cells numeric (numeric labels too)
        with open(path) as fh:
            table = np.loadtxt(fh, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except ValueError:
        return _parse_slow(path, names, label_col)
    if table.shape[0] and (table.shape[1] != len(names) or not np.isfinite(table).all()):
        return _parse_slow(path, names, label_col)
    labels = [repr(v) if v != int(v) else str(int(v)) for v in table[:, label_col]] if table.size else []
    return np.delete(table, label_col, axis=1), labels


def _read_split(root: Path, split: str, label: str, columns: list[str] | None) -> tuple[np.ndarray, list[str],
                                                                                       list[str], list[Path]]:
    xs, ys, files = [], [], _csv_files(root, split)
    for path in files:
        names = _header(path)
        if label not in names:
            raise DataError(f"{path}: no label column '{label}' (columns: {', '.join(names[:8])}"
                            f"{', ...' if len(names) > 8 else ''}); name it with --label-column")
        features = [n for n in names if n != label]
        if columns is None:
            columns = features
            if not columns:
                raise DataError(f"{path}: no feature columns besides the label '{label}'")
        elif set(features) != set(columns):
            missing, extra = sorted(set(columns) - set(features)), sorted(set(features) - set(columns))
            raise DataError(f"{path}: columns differ from {files[0] if split == 'train' else 'the train files'}"
                            f" (missing: {missing[:5]}, unexpected: {extra[:5]})")
        x, y = _parse(path, names, names.index(label))
        order = [features.index(c) for c in columns]  # same feature order whatever the file's column order
        xs.append(x[:, order])
        ys.extend(y)
    x = np.concatenate(xs)
    if len(x) == 0:
        raise DataError(f"csv:{root}: the {split} files hold no data rows")
    return x, ys, columns, files


def _class_order(labels: list[str]) -> list[str]:
    unique = set(labels)
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def load_csv_dir(directory: str, label: str = "label") -> Dataset:
    root = Path(directory)
    if not directory or not root.is_dir():
        raise DataError(f"csv:{directory}: not a directory (expected DIR/train/*.csv and DIR/test/*.csv)")
    x_train, y_train, columns, _ = _read_split(root, "train", label, None)
    x_test, y_test, _, test_files = _read_split(root, "test", label, columns)
    classes = _class_order(y_train)
    index = {c: i for i, c in enumerate(classes)}
    unseen = sorted(set(y_test) - set(index))
    if unseen:
        raise DataError(f"csv:{root}: test labels {unseen[:5]} never occur in the train files")
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std[std == 0] = 1.0  # constant columns stay 0 rather than dividing by zero
    norm = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return Dataset(f"csv:{directory}", norm(x_train), np.array([index[c] for c in y_train], dtype=np.int64),
                   norm(x_test), np.array([index[c] for c in y_test], dtype=np.int64), classes, columns)


def write_csv_dir(directory: str, source: str = "auto", train_files: int = 4, limit: int = 0,
                  data_dir: str = "") -> tuple[str, int, int]:
    """Writes DIR/train/part-<k>.csv and DIR/test/part-0.csv from `source` (fashion-mnist, digits, or auto:
    Fashion-MNIST when installed, else digits). Returns (source used, train rows, test rows)."""
    from neptune_rt.train import datasets
    root = Path(directory)
    if root.exists() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not empty; choose a new directory")
    if source == "auto":
        try:
            data = datasets.load("fashion-mnist", data_dir)
        except DataError:
            data = datasets.load("digits")
    else:
        data = datasets.load(source, data_dir)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    if limit:
        x_train, y_train = x_train[:limit], y_train[:limit]
        x_test, y_test = x_test[:max(1, limit // 6)], y_test[:max(1, limit // 6)]
    header = [f"f{i}" for i in range(x_train.shape[1])] + ["label"]
    for split, x, y, parts in (("train", x_train, y_train, train_files), ("test", x_test, y_test, 1)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for k, rows in enumerate(np.array_split(np.arange(len(x)), parts)):
            buf = io.StringIO()
            buf.write(",".join(header) + "\n")
            np.savetxt(buf, np.column_stack([x[rows], y[rows]]), delimiter=",",
                       fmt=["%.5g"] * x.shape[1] + ["%d"])
            (root / split / f"part-{k}.csv").write_text(buf.getvalue())
    return data.name, len(x_train), len(x_test)
