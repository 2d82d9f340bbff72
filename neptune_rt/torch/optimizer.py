"""`DistributedOptimizer`: Horovod's optimizer wrapper, built as a delegating wrapper instead of a run-time
subclass of the user's optimizer. Per-parameter `register_post_accumulate_grad_hook`s hand each gradient to the
engine as soon as backward has produced it (named by parameter, so ranks match whatever their order), and
`step()` waits for the results before the wrapped optimizer updates. Tested by tests/torch/test_optimizer.py.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch

from neptune_rt import engine as _engine
from neptune_rt.torch import ops
from neptune_rt.torch.compression import Compression, Compressor, EngineCodecCompressor, require_codec
from neptune_rt.torch.grad_buckets import GradBucket, plan_buckets
from neptune_rt.torch.onebit_momentum import engine_codec, local_momentum_for
from neptune_rt.torch.param_check import check_named, check_same_parameters_everywhere

__all__ = ["DistributedOptimizer"]

_NAME_PREFIX = "grad."
RESIDUALS_KEY = "neptune_rt_residuals"
DEFAULT_BUCKET_BYTES = 25 << 20  # as DDP: large enough for the ring's bandwidth, small enough to overlap
DEFAULT_FIRST_BUCKET_BYTES: int | None = None  # chosen by measurement: docs/torch.md, "Overlap with backward"


class DistributedOptimizer(torch.optim.Optimizer):
    """Wraps `optimizer` so that `step()` applies the all-reduced gradient of every rank.

    Same arguments and semantics as `horovod.torch.DistributedOptimizer`; plus `weight` / `set_weight(w)` for
    ranks with different batch sizes: with a weight w_i (local batch / global batch) the applied gradient is
    sum_i w_i g_i, exact whatever the split (implemented as the engine's prescale with op=Sum); and
    `bucket_bytes`, the size of the flat gradient buffers that travel as one engine tensor (`.grad` of each
    parameter becomes a view into its bucket, as with DDP's gradient_as_bucket_view); and `local_momentum`:
    with SGD(momentum > 0) and the onebit, int4 or auto codec (None, the default) or any engine codec (True),
    each rank keeps its momentum and the compressed all-reduce carries SGD's update direction instead of the
    gradient (see onebit_momentum.py and docs/torch.md, "Training at 1 bit"); False turns it off. With auto, the
    engine's cost model then chooses among dense, fp16, int8, int4 and onebit ("auto_lowbit").
    The constructor is collective: every rank must wrap an optimizer over the same named parameters.
    """

    # Not calling Optimizer.__init__ is deliberate: all optimizer state lives in the wrapped optimizer, and the
    # properties below expose it, so LR schedulers and checkpoints see the real thing.
    def __init__(self, optimizer: torch.optim.Optimizer,
                 named_parameters: Iterable[tuple[str, torch.Tensor]] | None = None,
                 compression: Compressor = Compression.none, backward_passes_per_step: int = 1,
                 op: str = ops.Average, gradient_predivide_factor: float = 1.0, weight: float | None = None,
                 bucket_bytes: int = DEFAULT_BUCKET_BYTES, local_momentum: bool | None = None,
                 first_bucket_bytes: int | None = DEFAULT_FIRST_BUCKET_BYTES):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"neptune_rt: DistributedOptimizer wraps a torch.optim.Optimizer, "
                            f"got {type(optimizer).__name__}")
        if isinstance(optimizer, DistributedOptimizer):
            raise TypeError("neptune_rt: this optimizer is already a DistributedOptimizer")
        if backward_passes_per_step < 1:
            raise ValueError(f"neptune_rt: backward_passes_per_step must be >= 1, got {backward_passes_per_step}")
        op = ops.resolve_op(op)
        if gradient_predivide_factor != 1.0 and op != ops.Average:
            raise ValueError("neptune_rt: gradient_predivide_factor is only supported with op=Average")
        codec = getattr(compression, "codec", "none")
        if codec != "none":
            require_codec(codec)  # fail here, not inside the first backward
        self._opt = optimizer
        self._local_momentum = local_momentum_for(optimizer, codec, local_momentum)
        if engine_codec(codec, self._local_momentum is not None) != codec:  # auto -> auto_lowbit
            compression = EngineCodecCompressor(engine_codec(codec, True), getattr(compression, "adaptive", True))
        self._compression = compression
        self._passes = backward_passes_per_step
        self._op = op
        self._predivide = float(gradient_predivide_factor)
        self._weight: float | None = None
        self.set_weight(weight)
        self._names: dict[torch.Tensor, str] = {}
        self._given_names = check_named(named_parameters)
        if bucket_bytes < 1:
            raise ValueError(f"neptune_rt: bucket_bytes must be >= 1, got {bucket_bytes}")
        self._bucket_bytes = int(bucket_bytes)
        if first_bucket_bytes is not None and first_bucket_bytes < 1:
            raise ValueError(f"neptune_rt: first_bucket_bytes must be >= 1 or None, got {first_bucket_bytes}")
        self._first_bucket_bytes = None if first_bucket_bytes is None else int(first_bucket_bytes)
        self._buckets: list[GradBucket] = []
        self._bucket_of: dict[torch.Tensor, GradBucket] = {}
        self._delay: dict[torch.Tensor, int] = {}
        self._hooks: list[Any] = []
        self._should_synchronize = True
        self._synchronized = False
        self._add_params(optimizer.param_groups)
        check_same_parameters_everywhere(self._names, self._bucket_bytes, self._first_bucket_bytes)

    # --- the wrapped optimizer's state, seen through the wrapper -------------------------------------------
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self._opt.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self._opt.param_groups = value

    @property
    def state(self) -> Any:
        return self._opt.state

    @state.setter
    def state(self, value: Any) -> None:
        self._opt.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self._opt.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self._opt.defaults = value

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        """The wrapped optimizer."""
        return self._opt

    def __getattr__(self, name: str) -> Any:
        # Anything else (optimizer hooks, user attributes) belongs to the wrapped optimizer.
        if name == "_opt":
            raise AttributeError(name)
        return getattr(self._opt, name)

    def __repr__(self) -> str:
        return f"DistributedOptimizer({self._opt!r})"

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state_dict, plus this rank's error-feedback residuals of the engine tensors
        this optimizer submits (under "neptune_rt_residuals", tagged with this rank and the world size). No
        communication; call it between steps (no all-reduce in flight)."""
        state = self._opt.state_dict()
        mine = {k: v for k, v in _engine.export_residuals().items() if k[0] in self._engine_names()}
        if mine:
            state = dict(state)
            state[RESIDUALS_KEY] = {"rank": _engine.rank(), "size": _engine.size(), "residuals": mine}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads the wrapped optimizer's state; the residuals in `state_dict` replace this optimizer's only if
        they were saved by this rank in a job of this size (each rank's residuals are its own: a state_dict
        saved by rank 0 and loaded everywhere leaves the other ranks' residuals as they are)."""
        state_dict = dict(state_dict)
        saved = state_dict.pop(RESIDUALS_KEY, None)
        self._opt.load_state_dict(state_dict)
        if saved is None or saved.get("rank") != _engine.rank() or saved.get("size") != _engine.size():
            return
        names = self._engine_names()
        keep = {k: v for k, v in _engine.export_residuals().items() if k[0] not in names}
        keep.update({k: v for k, v in saved["residuals"].items() if k[0] in names})
        _engine.import_residuals(keep)  # the engine replaces all of this rank's residuals: keep the others

    def _engine_names(self) -> set[str]:
        return {_NAME_PREFIX + name for name in self._names.values()}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Collective when it adds parameters: every rank must add the same group."""
        self._opt.add_param_group(param_group)
        self._add_params([self._opt.param_groups[-1]])

    def zero_grad(self, set_to_none: bool = True) -> None:
        if any(b.submitted for b in self._buckets):
            raise AssertionError(
                "neptune_rt: optimizer.zero_grad() was called after loss.backward() but before optimizer.step() "
                "or optimizer.synchronize(): gradients are still being all-reduced in place. Call zero_grad() "
                "before backward() or after step().")
        self._opt.zero_grad(set_to_none=set_to_none)

    # --- weighting ----------------------------------------------------------------------------------------
    def set_weight(self, weight: float | None) -> None:
        """From now on, all-reduce sum_i w_i g_i with this rank's w_i = `weight` (e.g. local batch / global
        batch); None returns to `op` (Horovod's plain average). Weights of all ranks should sum to 1."""
        if weight is not None:
            weight = float(weight)
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"neptune_rt: rank {_engine.rank()}: weight must be finite and >= 0, got {weight}")
            if self._op not in (ops.Average, ops.Sum):
                raise ValueError(f"neptune_rt: a weight needs op=Average or op=Sum, not {self._op!r}")
        self._weight = weight

    @property
    def weight(self) -> float | None:
        return self._weight

    # --- hooks and communication --------------------------------------------------------------------------
    def _add_params(self, groups: list[dict[str, Any]]) -> None:
        index = len(self._names)
        fresh = []
        for group in groups:
            for p in group["params"]:
                if p in self._names:
                    continue
                if self._given_names is not None:
                    if p not in self._given_names:
                        raise ValueError(
                            f"neptune_rt: named_parameters was given, but a parameter of shape {tuple(p.shape)} "
                            f"in the optimizer is not named in it; pass model.named_parameters() of the model "
                            f"whose parameters the optimizer holds")
                    name = self._given_names[p]
                else:
                    name = f"allreduce.noname.{index}"
                index += 1
                self._names[p] = name
                if p.requires_grad and p.numel() > 0:
                    fresh.append(p)
        # Only the optimizer's first parameters get the small first bucket (a later param group is bucketed
        # plainly: its gradients are not the first ones backward produces).
        first = self._first_bucket_bytes if not self._buckets else None
        for bucket in plan_buckets(fresh, self._names, self._bucket_bytes, _NAME_PREFIX, first):
            self._buckets.append(bucket)
            for p in bucket.params:
                self._bucket_of[p] = bucket
                self._delay[p] = self._passes
                self._hooks.append(p.register_post_accumulate_grad_hook(self._make_hook(p)))

    def _make_hook(self, p: torch.Tensor) -> Callable[[torch.Tensor], None]:
        bucket = self._bucket_of[p]

        def hook(_param: torch.Tensor) -> None:
            if self._delay[p] <= 0:
                raise AssertionError(
                    f"neptune_rt: rank {_engine.rank()}: gradient of '{self._names[p]}' was computed more than "
                    f"backward_passes_per_step={self._passes} times before step(); increase "
                    f"backward_passes_per_step to accumulate gradients locally")
            self._delay[p] -= 1
            if self._delay[p] == 0:
                bucket.take_grad(p)
                if bucket.full():
                    self._transform_and_submit(bucket)
        return hook

    def _transform_and_submit(self, bucket: GradBucket) -> None:
        if self._local_momentum is not None and not bucket.transformed:
            # Once per step: if the transform stops part way (an out-of-memory in its first step's clone, which the
            # Trainer survives), synchronize() submits the bucket without applying the momentum a second time.
            bucket.transformed = True
            self._local_momentum.transform(bucket.params)
        self._submit(bucket)

    @property
    def local_momentum(self) -> bool:
        """True when each rank keeps SGD's momentum and the update direction is what is communicated."""
        return self._local_momentum is not None

    def _submit(self, bucket: GradBucket) -> None:
        if self._weight is not None:
            op, prescale, postscale = ops.Sum, self._weight, 1.0
        elif self._op == ops.Average:
            op, prescale, postscale = self._op, 1.0 / self._predivide, self._predivide
        else:
            op, prescale, postscale = self._op, 1.0, 1.0
        bucket.submit(self._compression, op, prescale, postscale)

    def synchronize(self) -> None:
        """Waits until every gradient is all-reduced (submitting those whose hooks did not fire: this rank
        then contributes its partial or zero gradient, so that no other rank waits for it)."""
        for bucket in self._buckets:
            if not bucket.submitted:
                for p in bucket.params:
                    if p not in bucket.ready:
                        bucket.take_grad(p)
                self._transform_and_submit(bucket)
        try:
            for bucket in self._buckets:
                bucket.wait(self._compression)
        finally:
            for p in self._delay:
                self._delay[p] = self._passes
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Inside this block step() does not synchronize: use after an explicit synchronize() (e.g. to clip
        or unscale the reduced gradients before stepping)."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() after "
                              "optimizer.synchronize(): the gradients are all-reduced a second time. Wrap step() "
                              "in `with optimizer.skip_synchronize():`.")
            self.synchronize()
        self._synchronized = False
        if self._local_momentum is not None:
            with self._local_momentum.applying():  # .grad is the averaged update: no second momentum
                return self._opt.step() if closure is None else self._opt.step(closure)
        return self._opt.step() if closure is None else self._opt.step(closure)

    def remove_hooks(self) -> None:
        """Detaches the gradient hooks (the wrapped optimizer is then usable on its own)."""
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
