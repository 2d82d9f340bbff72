"""What the trainer reads from the engine, guarded: `neptune_rt.engine.stats()` (cumulative counters) and
`bucket_records(clear=True)` (per-bucket phase timings) where this build has them. Without them the engine lane
of the timeline and the encode/wire/decode/compression columns stay empty, and rank 0 says so once.
Exercised by the CLI tests (tests/train/test_train_cli.py, test_train_telemetry.py).
"""
from __future__ import annotations

from typing import Any

from neptune_rt import engine as _engine

__all__ = ["EngineTelemetry"]

_PHASES = ("encode", "wire", "decode")
NOTE = ("note: this engine build does not report per-bucket phases (neptune_rt.engine.stats / bucket_records): "
        "the timeline's engine lane and the encode/wire/decode and compression-ratio columns stay empty")


def _compression(now: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """Between two stats() readings: compression_ratio (bytes_raw / bytes_encoded) and codecs_used (bytes_raw per
    codec that ran), each only where something ran."""
    out: dict[str, Any] = {}
    encoded = now.get("bytes_encoded", 0) - then.get("bytes_encoded", 0)
    if encoded:
        out["compression_ratio"] = (now.get("bytes_raw", 0) - then.get("bytes_raw", 0)) / encoded
    before = then.get("codec_bytes") if isinstance(then.get("codec_bytes"), dict) else {}
    now_bytes = now.get("codec_bytes") if isinstance(now.get("codec_bytes"), dict) else {}
    used = {c: n - before.get(c, 0) for c, n in now_bytes.items() if n > before.get(c, 0)}
    if used:
        out["codecs_used"] = used
    return out


class EngineTelemetry:
    def __init__(self) -> None:
        self._stats = getattr(_engine, "stats", None)
        self._records = getattr(_engine, "bucket_records", None)
        self.available = self._stats is not None
        self._last: dict[str, Any] = self._read()
        self._start = self._last  # run_totals counts from here: this run's training (or what a resume trains)
        if self._records is not None:
            self._records(clear=True)  # drop what ran before training (parameter broadcast, checks)

    def _read(self) -> dict[str, Any]:
        if self._stats is None:
            return {}
        try:
            return dict(self._stats())
        except Exception:  # a failing probe must not stop training
            return {}

    def interval(self) -> dict[str, Any]:
        """Counter deltas since the previous call, as metrics columns (empty without engine stats):
        compression_ratio is bytes_raw / bytes_encoded (the codecs' compression; 1.0 when every bucket went dense)
        and codecs_used the interval's bytes_raw per codec that ran (the cost model may send a compressed bucket
        dense, as "none")."""
        now = self._read()
        if not now:
            return {}
        delta = {k: now.get(k, 0) - self._last.get(k, 0) for k in
                 ("bytes_raw", "bytes_wire", "bytes_encoded", "encode_s", "wire_s", "decode_s", "wait_s", "buckets")
                 if isinstance(now.get(k, 0), (int, float))}
        out = {"bytes_raw": delta.get("bytes_raw", 0), "bytes_wire": delta.get("bytes_wire", 0),
               "encode_s": delta.get("encode_s", 0.0), "wire_s": delta.get("wire_s", 0.0),
               "decode_s": delta.get("decode_s", 0.0), "engine_wait_s": delta.get("wait_s", 0.0),
               **_compression(now, self._last)}
        if delta.get("bytes_encoded"):
            out["bytes_encoded"] = delta["bytes_encoded"]
        if isinstance(now.get("codecs"), dict):
            out["codecs"] = now["codecs"]
        self._last = now
        return out

    def run_totals(self) -> dict[str, Any]:
        """Over the buckets since this object was made (the trainer's start or resume): compression_ratio and
        codecs_used, as interval() names them (empty without engine statistics)."""
        return _compression(self._read(), self._start)

    def bucket_events(self, timeline: Any, step: int) -> None:
        """Adds this step's bucket phases to the timeline's engine lane."""
        if self._records is None:
            return
        try:
            records = self._records(clear=True)
        except Exception:
            return
        for rec in records:
            t = float(rec.get("start", 0.0))
            for phase in _PHASES:
                dur = float(rec.get(f"{phase}_s", 0.0) or 0.0)
                if dur > 0:
                    timeline.add(phase, t, t + dur, step, lane=1, codec=rec.get("codec"),
                                 bytes_raw=rec.get("bytes_raw"), bytes_wire=rec.get("bytes_wire"))
                t += dur


def export_residuals() -> dict | None:
    fn = getattr(_engine, "export_residuals", None)
    return None if fn is None else fn()


def import_residuals(state: dict) -> bool:
    fn = getattr(_engine, "import_residuals", None)
    if fn is None:
        return False
    fn(state)
    return True
