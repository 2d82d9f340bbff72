"""Adapters from user buffers (numpy arrays, torch tensors, cupy arrays, any buffer) to the contiguous host
arrays the C++ engine reads and writes, and back to the caller's type. Tested by tests/test_engine.py."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

_NUMPY_DTYPES = {"float32", "float64", "float16", "int32", "int64", "uint8", "int8", "bfloat16"}


@dataclass
class HostView:
    """A C-contiguous numpy array over (or staged from) the user's data, with its engine dtype name."""
    array: np.ndarray
    dtype: str
    shape: tuple
    # Copies results back into the user's object (device tensors staged through the host); None if shared.
    write_back: Callable[[np.ndarray], None] | None = None


_TORCH_TYPES: dict[type, bool] = {}  # type -> is a torch tensor type; the module test costs ~1 us per call


def _is_torch(obj: Any) -> bool:
    kind = type(obj)
    known = _TORCH_TYPES.get(kind)
    if known is None:
        known = _TORCH_TYPES[kind] = kind.__module__.startswith("torch") and hasattr(kind, "dtype") and \
            hasattr(kind, "device")
    return known


def _is_cupy(obj: Any) -> bool:
    return type(obj).__module__.startswith("cupy") and hasattr(obj, "__cuda_array_interface__")


_DTYPE_NAMES: dict[Any, str] = {}  # dtype object -> engine name; str(numpy dtype) costs microseconds


def dtype_name(obj: Any) -> str:
    """Engine dtype name of a numpy/torch/cupy object; ValueError for unsupported types."""
    dtype = obj.dtype
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = str(dtype).removeprefix("torch.")
        if name not in _NUMPY_DTYPES:
            raise ValueError(f"unsupported dtype {dtype} (supported: {', '.join(sorted(_NUMPY_DTYPES))})")
        _DTYPE_NAMES[dtype] = name
    return name


def plain_array(obj: Any, writable: bool) -> str | None:
    """The engine dtype name when `obj` is a numpy array the engine can use as it is (C-contiguous, a supported
    dtype, writable if it must be), else None (then host_view does the work, or names what is wrong). The fast
    path of per-tensor and grouped submission: a few attribute reads, no HostView."""
    if type(obj) is not np.ndarray:
        return None
    flags = obj.flags
    if not flags.c_contiguous or (writable and not flags.writeable):
        return None
    name = _DTYPE_NAMES.get(obj.dtype)
    if name is None:
        try:
            name = dtype_name(obj)
        except ValueError:
            return None  # host_view names the problem
    return name


def host_view(obj: Any, name: str, writable: bool) -> HostView:
    """Views `obj` as a host numpy array the engine can use. Non-contiguous input raises ValueError."""
    if _is_torch(obj):
        return _torch_view(obj, name)
    if _is_cupy(obj):
        import cupy  # noqa: F401  (only for cupy input)
        dtype = dtype_name(obj)
        _require_contiguous(obj.flags.c_contiguous, name)
        host = np.ascontiguousarray(obj.get())
        return HostView(host, dtype, tuple(obj.shape), write_back=lambda arr: obj.set(arr))
    array = obj if isinstance(obj, np.ndarray) else np.asarray(memoryview(obj))
    dtype = dtype_name(array)
    _require_contiguous(array.flags.c_contiguous, name)
    if writable and not array.flags.writeable:
        raise ValueError(f"tensor '{name}' is read-only; pass a writable array for an in-place operation")
    return HostView(array, dtype, tuple(array.shape))


def _require_contiguous(contiguous: bool, name: str) -> None:
    if not contiguous:
        raise ValueError(f"tensor '{name}' is not contiguous; pass a contiguous copy "
                         "(numpy.ascontiguousarray(x) / x.contiguous())")


def _torch_view(t: Any, name: str) -> HostView:
    import torch
    dtype = dtype_name(t)
    _require_contiguous(t.is_contiguous(), name)
    data = t.detach() if t.requires_grad else t  # .numpy() refuses a tensor that requires grad
    if data.device.type != "cpu":
        # Stage through pinned host memory; .to() orders the copy after the producing stream's work.
        host = torch.empty(data.shape, dtype=data.dtype, pin_memory=torch.cuda.is_available())
        host.copy_(data)
        staged = _torch_to_numpy(host)
        return HostView(staged, dtype, tuple(t.shape),
                        write_back=lambda arr: data.copy_(host, non_blocking=False))
    return HostView(_torch_to_numpy(data), dtype, tuple(t.shape))


def _torch_to_numpy(t: Any) -> np.ndarray:
    import torch
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16: hand over the raw 2-byte words
        return t.view(torch.int16).numpy()
    return t.numpy()


def empty_like(obj: Any, shape: tuple | None = None) -> Any:
    """A new, uninitialized object of the caller's type (and device) with `shape` (default: obj's)."""
    shape = tuple(obj.shape) if shape is None else tuple(shape)
    if _is_torch(obj):
        import torch
        return torch.empty(shape, dtype=obj.dtype, device=obj.device)
    if _is_cupy(obj):
        import cupy
        return cupy.empty(shape, dtype=obj.dtype)
    array = obj if isinstance(obj, np.ndarray) else np.asarray(memoryview(obj))
    return np.empty(shape, dtype=array.dtype)


def from_bytes(obj: Any, raw: np.ndarray, shape: tuple) -> Any:
    """Wraps gathered bytes as the caller's type with `shape` (dtype of obj)."""
    if _is_torch(obj):
        import torch
        out = torch.from_numpy(raw).view(obj.dtype).reshape(shape)
        return out.to(obj.device) if obj.device.type != "cpu" else out
    if _is_cupy(obj):
        import cupy
        return cupy.asarray(raw.view(obj.dtype).reshape(shape))
    array = obj if isinstance(obj, np.ndarray) else np.asarray(memoryview(obj))
    return raw.view(array.dtype).reshape(shape)
