"""A DDP communication hook: torch's DistributedDataParallel keeps its bucketing and autograd integration
(over a gloo process group used only for set-up), and neptune_rt moves the gradients.

    import neptune_rt.torch as nrt
    nrt.init()
    ddp = DistributedDataParallel(model, process_group=gloo_group)
    ddp.register_comm_hook(nrt.comm_hook.CommHookState(model, codec="int8"), nrt.comm_hook.hook)

Engine tensors are named by the bucket's parameters, never by the bucket index, so DDP may rebuild its buckets
(it does after the first iteration) and error-feedback state stays attached to parameters: dense buckets travel
as one tensor named after their parameters; compressed buckets as one engine tensor per parameter, submitted as
one group, so the engine fuses exactly the DDP bucket, in parameter order, whatever the timing (compressed results
are bit-reproducible given the seed). With `momentum=beta` the hook keeps local momentum (hook_momentum.py) and
compresses that instead of the raw gradient. Tested by tests/torch/test_comm_hook.py against DDP's default hook
on 4 ranks.
"""
# No `from __future__ import annotations`: DDP checks the hook's annotations as real objects.
import threading
from typing import Any

import torch
import torch.distributed as dist

from neptune_rt import engine as _engine
from neptune_rt.torch import _wire, ops
from neptune_rt.torch.compression import Compression, Compressor, EngineCodecCompressor, compressor_for
from neptune_rt.torch.hook_momentum import HookMomentum

__all__ = ["CommHookState", "hook"]


class CommHookState:
    """Knobs of the neptune_rt DDP hook.

    module: the model whose parameters DDP holds; gives engine tensors the parameters' names. Without it,
        parameters are numbered in the order DDP first hands them over (identical on every rank).
    codec: "none" (dense), "fp16", "bf16" (cast here), "int8", "int4", "onebit", "auto" (engine codecs with
        error feedback kept per parameter), or a Compressor.
    adaptive: for engine codecs, let the engine's cost model send a bucket densely where that is faster
        (default); False quantizes every bucket.
    op: "average" (DDP's semantics) or "sum".
    weight: if set, this rank's gradient is scaled by it and summed (sum_i w_i g_i; weights sum to 1), for
        ranks with different batch sizes; `set_weight` changes it between steps.
    prefix: leading part of every engine tensor name, to keep two DDP models apart.
    momentum, weight_decay: the `torch.optim.SGD(momentum=, weight_decay=)` the user steps with. momentum > 0
        turns on local momentum (hook_momentum.py, docs/torch.md "Training at 1 bit"): each rank's momentum is
        what is compressed, with error feedback, and the gradient handed back makes SGD's momentum buffer the
        averaged local momentum. Needed for onebit and int4 to train like dense; "auto" then may pick them.
        `check_optimizer(opt)` verifies the optimizer matches. nesterov=True or dampening != 0: ValueError.

    calls: how many buckets the hook has been handed so far (DDP calls it once per bucket per backward); still
        0 after a backward pass means the hook was never registered (PyTorch Lightning's DDP strategy, for
        one, drops hooks on CPU: see docs/torch.md).
    """

    def __init__(self, module: torch.nn.Module | None = None, codec: str | Compressor = "none",
                 op: str = ops.Average, weight: float | None = None, prefix: str = "ddp", adaptive: bool = True,
                 momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, dampening: float = 0.0):
        if nesterov or dampening:
            raise ValueError(f"neptune_rt: the DDP hook's local momentum supports SGD momentum without Nesterov or "
                             f"dampening (got nesterov={nesterov}, dampening={dampening}); use "
                             f"DistributedOptimizer, whose local momentum handles both, or momentum=0 here")
        if weight_decay and not momentum:
            raise ValueError(f"neptune_rt: the DDP hook takes weight_decay={weight_decay} only with momentum > 0 "
                             f"(without momentum the optimizer applies its own weight decay): leave it out")
        self.momentum = HookMomentum(momentum, weight_decay) if momentum else None
        self.compressor = compressor_for(codec)
        if self.momentum is not None and self.compressor.codec == "auto":  # the cost model may pick int4/onebit
            self.compressor = EngineCodecCompressor("auto_lowbit", adaptive)
        if not adaptive and self.compressor.codec != "none" and self.compressor.adaptive:
            self.compressor = Compression.forced(self.compressor.codec)
        if self.compressor.codec != "none":
            from neptune_rt.torch.compression import require_codec
            require_codec(self.compressor.codec)
        if op not in (ops.Average, ops.Sum):
            raise ValueError(f"neptune_rt: the DDP hook reduces with op 'average' or 'sum', not {op!r}")
        self.op = op
        self.prefix = prefix
        self.weight: float | None = None
        self.set_weight(weight)
        self._names: dict[torch.Tensor, str] = {}
        if module is not None:
            self._names = {p: n for n, p in module.named_parameters()}
        self._lock = threading.Lock()
        self.calls = 0

    def set_weight(self, weight: float | None) -> None:
        if weight is not None and not (weight >= 0 and weight != float("inf")):
            raise ValueError(f"neptune_rt: weight must be finite and >= 0, got {weight}")
        self.weight = None if weight is None else float(weight)

    def name_of(self, param: torch.Tensor) -> str:
        name = self._names.get(param)
        if name is None:
            with self._lock:
                name = self._names.setdefault(param, f"param{len(self._names)}")
        return name

    def check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """With momentum: ValueError unless `optimizer` is SGD with the same momentum and weight decay."""
        if self.momentum is not None:
            self.momentum.check_optimizer(optimizer)

    def restore_momentum(self, optimizer: torch.optim.Optimizer) -> None:
        """After loading a checkpoint into `optimizer` (and before the next backward): the hook's ū_prev is SGD's
        momentum buffer, so take it from there (needs `module`, or the parameter numbering of the saved run)."""
        self.check_optimizer(optimizer)
        if self.momentum is None:
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                buf = optimizer.state.get(p, {}).get("momentum_buffer")
                if buf is not None:
                    self.momentum.buffers[f"{self.prefix}.{self.name_of(p)}"] = buf.detach().reshape(-1).clone()

    def scaling(self) -> tuple[str, float]:
        """(engine op, prescale) for this step."""
        return (ops.Sum, self.weight) if self.weight is not None else (self.op, 1.0)


def _stage(t: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """A host tensor the engine can read (t itself on the CPU; a pinned copy of a GPU tensor), and a function
    that brings the reduced values back. The blocking copy orders after the stream that produced t."""
    if t.device.type == "cpu":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t)
    return host, lambda: t.copy_(host)


def hook(state: CommHookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """All-reduces one DDP bucket through neptune_rt; the future completes when every part has arrived."""
    with state._lock:
        state.calls += 1
    rank = _engine.rank()  # now: once the engine has failed, asking for it raises (complete() must not)
    buffer = bucket.buffer()
    params = bucket.parameters()
    grads = bucket.gradients()
    op, prescale = state.scaling()
    compressor = state.compressor
    names = [f"{state.prefix}.{state.name_of(p)}" for p in params]
    esize = buffer.element_size()
    offsets = [(g.data_ptr() - buffer.data_ptr()) // esize for g in grads]
    if state.momentum is not None:
        views = [buffer[o:o + g.numel()] for o, g in zip(offsets, grads)]
        state.momentum.before(names, views, params)
    compressed, ctx = compressor.compress(buffer)
    host, copy_back = _stage(compressed)

    if compressor.codec == "none":
        # One engine tensor per bucket, named after its parameters (stable across bucket rebuilds).
        parts = [(f"{names[0]}+{len(names)}" if len(names) > 1 else names[0], host)]
    else:
        # One engine tensor per parameter: error feedback is kept per parameter name.
        parts = list(zip(names, _wire.flat_parts(host, [(o, g.numel()) for o, g in zip(offsets, grads)])))

    future: torch.futures.Future[torch.Tensor] = torch.futures.Future()

    def complete(group: _engine.GroupHandle) -> None:
        # Runs on the engine's completion thread once the last part has arrived (never under the cycle lock,
        # so communication goes on meanwhile).
        try:
            group.wait()
            if copy_back is not None:
                copy_back()
            result = compressor.decompress(compressed, ctx)
            if result is not buffer:
                buffer.copy_(result)
            if state.momentum is not None:
                state.momentum.after(names, views, params)
            future.set_result(buffer)
        except Exception as err:  # noqa: BLE001 -- handed to DDP, which raises it in backward()
            future.set_exception(RuntimeError(f"neptune_rt: rank {rank}: DDP bucket with {names[0]} ...: {err}"))

    # One group, one completion callback for all its members (a Python callback per member cost ~4 us a tensor).
    _engine.grouped_allreduce_async_([part for _, part in parts], [name for name, _ in parts], op, compressor.codec,
                                     prescale, 1.0, getattr(compressor, "adaptive", True),
                                     hand_over=True).add_done_callback(complete)  # the callback drives nothing
    return future
