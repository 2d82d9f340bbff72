"""Error-feedback residuals of the engine (csrc/engine/residual_store.h): export, import and release, re-exported
by neptune_rt.engine. The engine keeps one residual per (tensor name, codec asked for), in unweighted units, for
compressed all-reduces with a name. Tested by tests/test_residuals.py."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from neptune_rt.engine import _require

_warned_unnamed = False


def _warn_unnamed_compressed(codec: str) -> bool:
    """Unnamed compressed all-reduces get a new automatic name every call, so no residual could ever be
    used again: they run without error feedback (no residual is allocated). Warns once; returns False."""
    global _warned_unnamed
    if not _warned_unnamed:
        _warned_unnamed = True
        warnings.warn(f"neptune_rt: compressed all-reduce (codec={codec!r}) without a name: automatic names "
                      f"change every call, so no error feedback applies; pass name= to keep a residual",
                      RuntimeWarning, stacklevel=4)
    return False


def export_residuals() -> dict[tuple[str, str], np.ndarray]:
    """This rank's error-feedback residuals: (tensor name, codec) -> float32 copy (no communication).

    A residual is the tensor's shape flattened (count values, unweighted units). With the two-phase
    algorithm a tensor also has the second quantization's residual for the elements this rank reduced;
    its array then has two rows, (2, count): row 0 this rank's own residual, row 1 the reduced one (zero
    outside the elements this rank reduced). Consistent between steps, when no compressed all-reduce is
    in flight. Each rank exports its own: save them per rank."""
    out: dict[tuple[str, str], np.ndarray] = {}
    for name, codec, own, reduced in _require().export_residuals():
        out[(name, codec)] = own if reduced is None else np.stack([own, reduced])
    return out


def import_residuals(state: dict[tuple[str, str], Any]) -> None:
    """Replaces this rank's residuals with `state` (as export_residuals returns it); no communication.

    Raises RuntimeError while compressed all-reduces are in flight (wait for their handles first), and
    ValueError for a malformed entry. A residual whose size does not match its tensor at first use is
    discarded with a warning naming the tensor. With NEPTUNE_RT_ROUNDING=stochastic a fresh engine draws
    other roundings than the run it resumes (its buckets' call counters restart); round-to-nearest resumes bitwise."""
    items = []
    for key, value in state.items():
        if not (isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key)):
            raise ValueError(f"import_residuals: keys must be (tensor name, codec) tuples, got {key!r}")
        arr = np.asarray(value)
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"import_residuals: residual of tensor '{key[0]}' has dtype {arr.dtype}; "
                             f"expected float32 (as export_residuals returns)")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1:
            items.append((key[0], key[1], arr, None))
        elif arr.ndim == 2 and arr.shape[0] == 2:
            items.append((key[0], key[1], arr[0].copy(), arr[1].copy()))
        else:
            raise ValueError(f"import_residuals: residual of tensor '{key[0]}' has shape {arr.shape}; expected "
                             f"(count,) or (2, count) as export_residuals returns")
    _require().import_residuals(items)


def release(name: str) -> None:
    """Frees the error-feedback residual(s) of tensor `name` on this rank (e.g. a parameter that is gone);
    its next compressed all-reduce starts from zero error."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"release: tensor name must be a non-empty string, got {name!r}")
    _require().release_residuals(name)
