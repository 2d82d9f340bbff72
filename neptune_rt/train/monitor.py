"""What a run leaves behind and shows while it runs: `metrics.jsonl` (one record per logged step and per
evaluation), `timeline.rank<k>.json` (Chrome trace format: chrome://tracing or ui.perfetto.dev), `run.json` (the
run's state, so `neptune-rt status` and the report can tell a finished run from a running or failed one),
TensorBoard event files (tensorboard's own writer) and rank 0's progress bar or progress lines.
Exercised by tests/train/test_train_cli.py (files of real runs) and tests/train/test_train_telemetry.py.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["write_atomic", "MetricsLog", "Timeline", "Progress", "RunState", "TensorBoard", "read_metrics",
           "codec_label", "codecs_by_bytes"]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def codecs_by_bytes(used: dict[str, int]) -> list[str]:
    """The codecs that carried at least 1% of the bytes (a metrics record's codecs_used: bytes per codec that ran),
    most bytes first ("none": sent dense, which the cost model does where it predicts that to be faster; the small
    all-reduces of evaluation and logging are dense too)."""
    total = sum(used.values())
    return [c for c in sorted(used, key=lambda c: (-used[c], c)) if used[c] >= 0.01 * total]


def codec_label(used: dict[str, int]) -> str:
    """codecs_by_bytes for a progress line: "int8", "int8+none"; "-" for none."""
    return "+".join(codecs_by_bytes(used)) or "-"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl; a torn last line (a run killed mid-write) is skipped."""
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


class MetricsLog:
    """Appends JSON records, one per line, flushed at once (another terminal may be reading)."""

    def __init__(self, path: Path, keep_until_step: int | None = None):
        self.path = path
        if keep_until_step is not None:  # resuming: drop what the interrupted run logged after its checkpoint
            kept = [r for r in read_metrics(path) if r.get("step", 0) <= keep_until_step]
            write_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
        self._fh = open(path, "a")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class Timeline:
    """Complete events ("ph": "X") in microseconds since the run started, one file per rank; threads are
    lanes: 0 = the training loop, 1 = the engine's per-bucket phases."""
    LANES = {0: "train loop", 1: "engine (encode / wire / decode)"}

    def __init__(self, path: Path, rank: int, origin: float, keep_until_step: int | None = None):
        self.path, self.rank, self.origin = path, rank, origin
        self.events: list[dict[str, Any]] = []
        if keep_until_step is not None and path.exists():
            try:
                old = json.loads(path.read_text())["traceEvents"]
                self.events = [e for e in old if e.get("ph") == "X"
                               and e.get("args", {}).get("step", 0) <= keep_until_step]
            except (ValueError, KeyError, TypeError):
                self.events = []

    def add(self, name: str, start: float, end: float, step: int, lane: int = 0, **args: Any) -> None:
        """`start`/`end` are time.monotonic() seconds."""
        self.events.append({"name": name, "ph": "X", "pid": self.rank, "tid": lane,
                            "ts": round((start - self.origin) * 1e6, 1),
                            "dur": round(max(end - start, 0.0) * 1e6, 1), "args": {"step": step, **args}})

    def write(self) -> None:
        meta = [{"name": "process_name", "ph": "M", "pid": self.rank, "args": {"name": f"rank {self.rank}"}}]
        meta += [{"name": "thread_name", "ph": "M", "pid": self.rank, "tid": t, "args": {"name": n}}
                 for t, n in self.LANES.items()]
        write_atomic(self.path, json.dumps({"traceEvents": meta + self.events, "displayTimeUnit": "ms"}))


class RunState:
    """run.json: state ("running", "finished", "failed"), step, total steps, times, final results."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    def update(self, **fields: Any) -> None:
        self.data.update(fields, updated=time.time())
        write_atomic(self.path, json.dumps(self.data, indent=1) + "\n")


class Progress:
    """Rank 0's live view: a tqdm bar on a TTY (or with progress="bar"), else one line per log interval."""

    def __init__(self, mode: str, total: int, initial: int, enabled: bool):
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode = mode if enabled else "off"
        self.bar = None
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=0.5, smoothing=0.1)

    def update(self, step: int, fields: dict[str, str], log_line: bool) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(" ".join(f"{k}={v}" for k, v in fields.items()), refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.mode == "lines" and log_line:
            print(f"step {step} " + " ".join(f"{k}={v}" for k, v in fields.items()), file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        elif self.mode != "off":
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoard:
    """Scalars through torch.utils.tensorboard (tensorboard's event-file writer)."""

    def __init__(self, directory: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise RuntimeError(f"--tensorboard needs the tensorboard package (pip install tensorboard): {err}") \
                from None
        self.writer = SummaryWriter(log_dir=str(directory))

    def scalars(self, step: int, values: dict[str, Any], wall: float | None = None) -> None:
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step, walltime=wall)

    def close(self) -> None:
        self.writer.close()
