"""What the PyTorch binding does to a tensor before the engine sees it and after the result comes back, where
Horovod accepts more than the engine: argument checks with a hint (`check_tensor`), int16 (the engine has no
16-bit integer type) and integer pre/post-scaling (the engine scales floating-point tensors only); and
`flat_parts`, the per-parameter slices of a flat bucket that the DDP hook and DistributedOptimizer submit as one
group. Used by neptune_rt.torch.ops; tested under mpirun by tests/torch/workers/horovod_compat_worker.py (and
the hook and optimizer tests for `flat_parts`).
"""
from __future__ import annotations

import torch

from neptune_rt import engine as _engine

__all__ = ["check_tensor", "check_reducible", "is_integer", "scale_integer", "REDUCE_AS", "needs_bytes", "as_bytes",
           "flat_parts"]

# All-reduce: dtypes the engine lacks, reduced in a wider type of the engine's and narrowed on return. The
# narrowing wraps modulo 2**16, as int16 addition in Horovod's reduction does.
REDUCE_AS = {torch.int16: torch.int32}
# Floating-point dtypes the engine reduces as they are (no widening, no integer scaling), with its names for them.
FLOATS = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
# Broadcast and allgather only copy bytes, so any dtype the engine lacks travels as uint8.
_ENGINE_DTYPES = {torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64,
                  torch.uint8, torch.int8}


def _where() -> str:
    return f"rank {_engine.rank()}: " if _engine.is_initialized() else ""


def check_tensor(tensor: object, call: str, name: str | None) -> None:
    """ValueError for None (naming the argument and the usual cause), TypeError for a non-tensor."""
    label = f" (name {name!r})" if name else ""
    if tensor is None:
        raise ValueError(
            f"neptune_rt: {_where()}{call}{label}: argument 'tensor' is None. A parameter's .grad stays None until "
            f"a backward pass has produced it (for example right after broadcast_optimizer_state, or for a "
            f"parameter the loss does not use): skip parameters whose .grad is None, or pass "
            f"torch.zeros_like(p) in its place.")
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"neptune_rt: {_where()}{call}{label}: argument 'tensor' must be a torch.Tensor, "
                        f"got {type(tensor).__name__}")


def check_reducible(t: torch.Tensor, call: str, name: str | None) -> None:
    """ValueError naming the dtype for an all-reduce the engine cannot do even after widening."""
    if t.dtype not in _ENGINE_DTYPES and t.dtype not in REDUCE_AS:
        label = f" (name {name!r})" if name else ""
        raise ValueError(f"neptune_rt: {_where()}{call}{label}: cannot all-reduce a {t.dtype} tensor; all-reduce "
                         f"takes uint8, int8, int16, int32, int64, float16, bfloat16, float32 and float64 "
                         f"(broadcast and allgather take any dtype)")


def is_integer(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def scale_integer(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Horovod's integer scaling: factor * x in float64, truncated toward zero (C's conversion), as a new
    tensor of t's dtype. Through int64 so that narrowing wraps instead of being undefined."""
    return (t.to(torch.float64) * factor).to(torch.int64).to(t.dtype)


def needs_bytes(t: torch.Tensor) -> bool:
    return t.dtype not in _ENGINE_DTYPES


def as_bytes(t: torch.Tensor, call: str, name: str | None) -> torch.Tensor:
    """A uint8 view of t's memory: 1-D for a 0-d tensor, otherwise with the last dimension widened by the
    element size, so dimension 0 (the one allgather concatenates) is kept."""
    if not t.is_contiguous():
        raise ValueError(f"neptune_rt: {_where()}{call}: tensor {name!r} is not contiguous; pass x.contiguous()")
    return t.reshape(1).view(torch.uint8) if t.dim() == 0 else t.view(torch.uint8)


# Dtypes numpy shares with torch (bfloat16 is not one): a CPU tensor of these is viewed as a numpy array as it is.
_NUMPY_NATIVE = {torch.float32, torch.float64, torch.float16}


def flat_parts(flat: torch.Tensor, spans: list[tuple[int, int]]) -> list:
    """Slices (offset, elements) of a contiguous 1-D tensor, for a grouped all-reduce in place. On the CPU with a
    dtype numpy shares they are numpy views of the tensor's memory, which the engine takes on its fast path (torch
    slices cost a view conversion each: 2.2 ms against 0.35 ms for a group of 161 on 1 rank); otherwise torch
    slices."""
    if flat.device.type == "cpu" and flat.dtype in _NUMPY_NATIVE and flat.is_contiguous():
        base = flat.detach().numpy()
    else:
        base = flat
    return [base[offset:offset + n] for offset, n in spans]
