"""Start-of-training helpers with Horovod's names: `broadcast_parameters`, `broadcast_optimizer_state`,
`broadcast_object`, `allgather_object`. Tested by tests/torch/test_broadcast_join.py under mpirun.

`broadcast_optimizer_state` differs from Horovod's on purpose: it never runs a dummy optimizer step to create
missing state (that step moves parameters when the optimizer decays weights); it sends root's state layout
as an object and the state tensors in place, and non-root ranks load it with `load_state_dict`.
"""
from __future__ import annotations

import io
import pickle
from typing import Any, Iterable, Mapping

import torch

from neptune_rt import engine as _engine
from neptune_rt.torch import _wire, ops

__all__ = ["broadcast_parameters", "broadcast_optimizer_state", "broadcast_object", "allgather_object"]


def _broadcast_inplace(tensors: Iterable[tuple[str, torch.Tensor]], root_rank: int) -> None:
    handles, copies = [], []
    for name, t in tensors:
        _wire.check_tensor(t, "broadcast", name)
        if t.is_sparse:
            raise ValueError(f"neptune_rt: rank {_engine.rank()}: '{name}' is sparse; broadcast its dense form")
        work = t.detach() if t.is_contiguous() else t.detach().contiguous()
        if work.data_ptr() != t.data_ptr() or work.dtype != t.dtype:
            copies.append((t, work))
        handles.append(ops.broadcast_async_(work, root_rank, name=name))  # any dtype: see ops
    for h in handles:
        h.wait()
    with torch.no_grad():
        for t, work in copies:
            t.copy_(work)


def broadcast_parameters(params: Mapping[str, torch.Tensor] | Iterable[tuple[str, torch.Tensor]],
                         root_rank: int) -> None:
    """Overwrites every rank's tensors with `root_rank`'s, in place. `params` is a `state_dict()` or
    `named_parameters()`; names must match across ranks."""
    items = sorted(params.items()) if isinstance(params, Mapping) else list(params)
    if any(not isinstance(item, tuple) or len(item) != 2 for item in items):
        raise ValueError("neptune_rt: broadcast_parameters takes a state_dict() or a sequence of "
                         "(name, tensor) tuples such as model.named_parameters()")
    _broadcast_inplace(((f"broadcast_parameters.{name}", t) for name, t in items), root_rank)


class _TensorSlot:
    """Stands in for a state tensor in the layout that root sends as an object."""

    def __init__(self, t: torch.Tensor, param: torch.Tensor | None):
        self.shape, self.dtype = tuple(t.shape), t.dtype
        # Tensors shaped like their parameter live on its device; scalars (e.g. Adam's step) stay on the CPU.
        self.on_param_device = param is not None and t.device == param.device and t.device.type != "cpu"


def _layout(value: Any, param: torch.Tensor | None, found: list[torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        found.append(value)
        return _TensorSlot(value, param)
    if isinstance(value, dict):
        return {k: _layout(v, param, found) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_layout(v, param, found) for v in value)
    return value


def _allocate(value: Any, device: torch.device, made: list[torch.Tensor]) -> Any:
    if isinstance(value, _TensorSlot):
        t = torch.empty(value.shape, dtype=value.dtype, device=device if value.on_param_device else "cpu")
        made.append(t)
        return t
    if isinstance(value, dict):
        return {k: _allocate(v, device, made) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_allocate(v, device, made) for v in value)
    return value


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int) -> None:
    """Makes every rank's optimizer state (per-parameter state and param_group options such as lr) equal
    to `root_rank`'s. Works for a plain torch optimizer or a DistributedOptimizer."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    is_root = _engine.rank() == root_rank
    found: list[torch.Tensor] = []
    layout = None
    if is_root:
        sd = optimizer.state_dict()
        state = {k: _layout(v, params[k] if isinstance(k, int) and k < len(params) else None, found)
                 for k, v in sd["state"].items()}
        layout = {"state": state, "param_groups": sd["param_groups"]}
    layout = broadcast_object(layout, root_rank, name="broadcast_optimizer_state.layout")
    if not is_root:
        if len(layout["param_groups"]) != len(optimizer.param_groups):
            raise ValueError(f"neptune_rt: rank {_engine.rank()}: optimizer has {len(optimizer.param_groups)} "
                             f"param groups but rank {root_rank} has {len(layout['param_groups'])}")
        state = {}
        for k, v in layout["state"].items():
            device = params[k].device if isinstance(k, int) and k < len(params) else torch.device("cpu")
            state[k] = _allocate(v, device, found)
        layout = {"state": state, "param_groups": layout["param_groups"]}
    _broadcast_inplace(((f"broadcast_optimizer_state.{i}", t) for i, t in enumerate(found)), root_rank)
    if not is_root:
        optimizer.load_state_dict(layout)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """Returns `root_rank`'s `obj` (pickled) on every rank."""
    # Non-root ranks usually pass None, so the default name cannot depend on the object (Horovod's does).
    name = name or "broadcast_object"
    payload = torch.empty(0, dtype=torch.uint8)
    if _engine.rank() == root_rank:
        buf = io.BytesIO()
        torch.save(obj, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
        payload = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    length = ops.broadcast_(torch.tensor([payload.numel()], dtype=torch.int64), root_rank, name=f"{name}.len")
    if _engine.rank() != root_rank:
        payload = torch.empty(int(length.item()), dtype=torch.uint8)
    ops.broadcast_(payload, root_rank, name=f"{name}.data")
    if _engine.rank() == root_rank:
        return obj
    return torch.load(io.BytesIO(payload.numpy().tobytes()), weights_only=False)


def allgather_object(obj: Any, name: str | None = None) -> list[Any]:
    """Returns the list of every rank's `obj`, indexed by rank."""
    name = name or "allgather_object"
    buf = io.BytesIO()
    torch.save(obj, buf, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    payload = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    sizes = ops.allgather(torch.tensor([payload.numel()], dtype=torch.int64), name=f"{name}.len")
    gathered = ops.allgather(payload, name=f"{name}.data").numpy()
    out, offset = [], 0
    for n in sizes.tolist():
        out.append(torch.load(io.BytesIO(gathered[offset:offset + n].tobytes()), weights_only=False))
        offset += n
    return out
