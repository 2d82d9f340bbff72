"""Gradient compression for the PyTorch binding, with Horovod's `Compression.none` / `Compression.fp16` surface.

A compressor has Horovod's interface, `compress(tensor) -> (tensor, ctx)` and `decompress(tensor, ctx)`, plus
one attribute, `codec`: the engine codec that carries the (compressed) tensor on the wire. Two kinds exist:

* casting compressors (`fp16`, `bf16`): cast here, in PyTorch, before the all-reduce and back after it; the
  engine moves a dense half-precision tensor (`codec="none"`). This is Horovod's scheme and works today.
* engine codecs (`int8`, `int4`, `onebit`, and `auto`): the tensor passes through unchanged and `codec` names
  the engine's quantizer. These need error feedback, which the engine fuses into its encoder. By default the
  engine's cost model may still send a bucket densely where that is predicted faster (`adaptive`);
  `Compression.forced("int8")` always quantizes. With onebit or int4 and SGD with momentum,
  DistributedOptimizer communicates the momentum update rather than the gradient (onebit_momentum.py);
  `OneBitAdam` (onebit_adam.py) does the same for Adam after a dense warm-up.

The seam with the engine's codecs (issue 3), for whoever lands them:
  - the engine keeps one error-feedback residual per (tensor name, codec asked for); this binding always names
    gradient tensors by parameter (`DistributedOptimizer`: its parameter name; the DDP hook: `<prefix>.<param
    name>`, one engine tensor per parameter), so residuals stay attached to parameters whatever the bucketing;
    `neptune_rt.engine.release(name)` frees one, `export_residuals()` / `import_residuals()` checkpoint them;
  - the per-rank weight travels as the all-reduce's `prescale`, applied after error feedback: residuals stay in
    unweighted units, so a new weight never rescales stale error;
  - availability is `codec in neptune_rt.engine.CODECS`; until a codec is listed there, using it raises
    a RuntimeError naming it (see `require_codec`).
Tested by tests/torch/test_compression.py (in-process) and the load_digits training test under mpirun.
"""
from __future__ import annotations

from typing import Any

import torch

from neptune_rt import engine as _engine

__all__ = ["Compressor", "NoneCompressor", "CastCompressor", "EngineCodecCompressor", "Compression",
           "compressor_for", "require_codec"]


def require_codec(codec: str) -> None:
    """RuntimeError unless the engine in this build implements `codec`."""
    if codec not in _engine.CODECS:
        raise RuntimeError(
            f"neptune_rt: compression codec {codec!r} is not available in this build of the engine "
            f"(available: {', '.join(_engine.CODECS)}). It arrives with the engine's codec work (issue 3); "
            f"until then use Compression.none, Compression.fp16 or Compression.bf16.")


class Compressor:
    """Horovod's compressor interface, plus `codec` (the engine codec used on the wire) and `adaptive` (the
    engine may fall back to dense where its cost model predicts that to be faster)."""
    name = "none"
    codec = "none"
    adaptive = True

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return tensor, None

    def decompress(self, tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor

    def __repr__(self) -> str:
        return f"Compression.{self.name}"


class NoneCompressor(Compressor):
    """Dense: the tensor travels as it is."""


class CastCompressor(Compressor):
    """Casts floating-point tensors to a 16-bit type for the wire and back afterwards (Horovod's fp16)."""

    def __init__(self, name: str, dtype: torch.dtype):
        self.name = name
        self.dtype = dtype

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if tensor.dtype.is_floating_point and tensor.dtype != self.dtype:
            return tensor.to(self.dtype), tensor.dtype
        return tensor, None

    def decompress(self, tensor: torch.Tensor, ctx: Any) -> torch.Tensor:
        return tensor if ctx is None else tensor.to(ctx)


class EngineCodecCompressor(Compressor):
    """Leaves the tensor as it is and asks the engine to quantize it with `codec` (with error feedback)."""

    def __init__(self, codec: str, adaptive: bool = True):
        self.name = codec if adaptive else f"forced({codec!r})"
        self.codec = codec
        self.adaptive = adaptive

    def compress(self, tensor: torch.Tensor) -> tuple[torch.Tensor, Any]:
        require_codec(self.codec)
        if not tensor.dtype.is_floating_point:
            raise ValueError(f"neptune_rt: codec {self.codec!r} quantizes floating-point gradients, "
                             f"got a {tensor.dtype} tensor; use Compression.none for it")
        return tensor, None


_ENGINE_CODECS = ("int8", "int4", "onebit", "auto")


class Compression:
    """The compression choices, as in Horovod: `compression=Compression.fp16`."""
    none: Compressor = NoneCompressor()
    fp16: Compressor = CastCompressor("fp16", torch.float16)
    bf16: Compressor = CastCompressor("bf16", torch.bfloat16)
    int8: Compressor = EngineCodecCompressor("int8")
    int4: Compressor = EngineCodecCompressor("int4")
    onebit: Compressor = EngineCodecCompressor("onebit")
    auto: Compressor = EngineCodecCompressor("auto")  # the engine's cost model picks dense, fp16 or int8

    @staticmethod
    def forced(codec: str) -> Compressor:
        """An engine codec applied to every bucket, even where dense would be faster (tests, experiments)."""
        if codec not in _ENGINE_CODECS:
            raise ValueError(f"neptune_rt: forced() takes an engine codec ({', '.join(_ENGINE_CODECS)}), "
                             f"got {codec!r}")
        return EngineCodecCompressor(codec, adaptive=False)


_BY_NAME = {c.name: c for c in (Compression.none, Compression.fp16, Compression.bf16, Compression.int8,
                                Compression.int4, Compression.onebit, Compression.auto)}


def compressor_for(codec: str | Compressor) -> Compressor:
    """The compressor for a codec name ("none", "fp16", "bf16", "int8", "int4", "onebit", "auto"), or `codec`
    itself."""
    if isinstance(codec, Compressor):
        return codec
    if codec not in _BY_NAME:
        raise ValueError(f"neptune_rt: unknown codec {codec!r} (choose one of {', '.join(_BY_NAME)})")
    return _BY_NAME[codec]
