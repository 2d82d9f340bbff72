"""Atomic checkpoints: rank 0 writes `checkpoints/step-<N>.pt` through a temporary file (write, flush, fsync,
rename, fsync the directory) and keeps the last K; a kill at any moment leaves the previous checkpoint intact
and never a partial file under a final name. Every rank loads. Exercised by
the kill-and-resume tests in tests/train/test_train_resume.py (a writer killed half-way included).
"""
from __future__ import annotations

import io
import os
import re
import signal
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["CheckpointError", "save", "latest", "load", "remove_partial", "fault", "die_if"]

FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.pt$")
FAULT_ENV = "NEPTUNE_RT_TRAIN_FAULT"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit this run; the message names the file and the fix."""


def fault(kind: str, step: int) -> bool:
    """Test hook: $NEPTUNE_RT_TRAIN_FAULT=<kind>:<step> (kinds: kill-at-step, kill-in-checkpoint)."""
    from neptune_rt import _env
    spec = _env.get(FAULT_ENV)
    return spec == f"{kind}:{step}"


def die_if(kind: str, step: int) -> None:
    """Test hook: SIGKILL this process when $NEPTUNE_RT_TRAIN_FAULT is <kind>:<step>."""
    if fault(kind, step):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(directory: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Writes `state` as checkpoint `step` atomically and deletes all but the newest `keep` checkpoints."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    import torch
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "step": step, **state}, buf)
    data = buf.getbuffer()
    with open(tmp, "wb") as fh:
        if fault("kill-in-checkpoint", step):  # die half-way through the write, as a SIGKILL would
            fh.write(data[:len(data) // 2])
            fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(directory)
    for old in sorted(_checkpoints(directory))[:-keep]:
        old[1].unlink(missing_ok=True)
    return final


def _checkpoints(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return found


def latest(directory: Path) -> Path | None:
    """The newest complete checkpoint in `directory` (temporary files of an interrupted write are ignored)."""
    found = sorted(_checkpoints(directory))
    return found[-1][1] if found else None


def resumable(run: Path) -> Path:
    """The checkpoint `--resume RUN` would load, as far as can be told without torch: RUN is a run directory, has a
    complete checkpoint, and that is a zip archive, as torch.save writes (load() reads it)."""
    if not (run / "run.json").exists():
        raise CheckpointError(f"--resume {run}: not a run directory (no run.json)")
    last = latest(run / "checkpoints")
    if last is None:
        raise CheckpointError(f"--resume {run}: no checkpoint in {run / 'checkpoints'} (the run stopped before its "
                              f"first one); start the run again")
    if not zipfile.is_zipfile(last):
        raise CheckpointError(f"checkpoint {last} is unreadable (not the zip archive torch.save writes); delete it "
                              f"to resume from the one before, or start a new run")
    return last


def remove_partial(directory: Path) -> None:
    """Deletes temporary files left by a write that was killed."""
    if directory.is_dir():
        for path in directory.glob(".step-*.pt.tmp-*"):
            path.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}: {err}); delete it to "
                              f"resume from the one before, or start a new run") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a neptune_rt training checkpoint of format {FORMAT}")
    return state
