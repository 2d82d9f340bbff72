"""Grouped all-reduces (Horovod's grouped_allreduce): several tensors of one dtype that travel as one engine
bucket, in the given order, once all are ready on every rank. The bucket then depends only on what was
submitted, never on arrival timing, so compressed results are bit-reproducible given the seed (the DDP hook
submits each DDP bucket this way). Re-exported by neptune_rt.engine; exercised by tests/test_engine_stats.py.
"""
from __future__ import annotations

from neptune_rt.buffers import empty_like, host_view
from neptune_rt.engine import Handle, _auto_name, _check_op, _require, _track, _written, codec_id

__all__ = ["grouped_allreduce", "grouped_allreduce_", "grouped_allreduce_async", "grouped_allreduce_async_"]


def _enqueue_group(tensors: list, in_place: bool, names: list[str] | None, op: str, codec: str,
                   prescale: float, postscale: float, adaptive: bool) -> list[Handle]:
    engine = _require()
    tensors = list(tensors)
    if not tensors:
        raise ValueError("grouped all-reduce of no tensors")
    if names is None:
        names = [_auto_name("allreduce", None) for _ in tensors]
    names = [_auto_name("allreduce", n) for n in names]
    if len(names) != len(tensors):
        raise ValueError(f"grouped all-reduce: {len(tensors)} tensors but {len(names)} names")
    for n in names:
        _check_op(op, n)
    views, outs, out_views = [], [], []
    for tensor, n in zip(tensors, names):
        view = host_view(tensor, n, writable=in_place)
        out = tensor if in_place else empty_like(tensor)
        views.append(view)
        outs.append(out)
        out_views.append(view if in_place else host_view(out, n, writable=True))
    dtypes = {v.dtype for v in views}
    if len(dtypes) != 1:
        raise ValueError(f"grouped all-reduce of {names[0]!r}...: the tensors must share one dtype, got "
                         f"{sorted(dtypes)}")
    natives = engine.enqueue_group_allreduce(names, [v.array for v in views], [v.array for v in out_views],
                                             views[0].dtype, [list(v.shape) for v in views], op,
                                             codec_id(codec, adaptive), prescale, postscale)
    return [_track(Handle(native, (t, v, o, ov), _written(o, ov)))
            for native, t, v, o, ov in zip(natives, tensors, views, outs, out_views)]


def grouped_allreduce_async_(tensors: list, names: list[str] | None = None, op: str = "sum",
                             codec: str = "none", prescale: float = 1.0, postscale: float = 1.0,
                             adaptive: bool = True) -> list[Handle]:
    """In-place all-reduce of several tensors of one dtype that travel as one bucket, in this order, once all
    are ready on every rank. Fusion then depends only on what was submitted, never on timing, so compressed
    results are bit-reproducible given the seed. One handle per tensor."""
    return _enqueue_group(tensors, True, names, op, codec, prescale, postscale, adaptive)


def grouped_allreduce_async(tensors: list, names: list[str] | None = None, op: str = "sum",
                            codec: str = "none", prescale: float = 1.0, postscale: float = 1.0,
                            adaptive: bool = True) -> list[Handle]:
    """As grouped_allreduce_async_, into new objects; the inputs stay unchanged."""
    return _enqueue_group(tensors, False, names, op, codec, prescale, postscale, adaptive)


def grouped_allreduce(tensors: list, names: list[str] | None = None, op: str = "sum", codec: str = "none",
                      prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> list:
    return [h.wait() for h in grouped_allreduce_async(tensors, names, op, codec, prescale, postscale, adaptive)]


def grouped_allreduce_(tensors: list, names: list[str] | None = None, op: str = "sum", codec: str = "none",
                       prescale: float = 1.0, postscale: float = 1.0, adaptive: bool = True) -> list:
    return [h.wait() for h in grouped_allreduce_async_(tensors, names, op, codec, prescale, postscale, adaptive)]
