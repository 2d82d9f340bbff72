"""Runs `python -m neptune_rt ARGS` under real mpirun for the train tests (hard timeout, whole process group
killed on a hang), and reads what a run leaves behind."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from mpi_helpers import LAUNCHER_RACE, MpiResult, launcher_failed, mpi_env, mpirun_path  # noqa: E402,F401


Result = MpiResult  # returncode, stdout, stderr, output


def neptune(np: int, *args: str, timeout: float = 120, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> Result:
    """`mpirun -np NP python -m neptune_rt ARGS` (np=0: without mpirun)."""
    cmd = [sys.executable, "-m", "neptune_rt", *map(str, args)]
    if np:
        cmd = [mpirun_path(), "-np", str(np), "--oversubscribe", "--bind-to", "none", *cmd]
    full_env = mpi_env({"NEPTUNE_RT_TIMEOUT_SECONDS": "60", **(env or {})})
    for attempt in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"{' '.join(cmd)} hung for {timeout} s:\n{out[-3000:]}\n{err[-3000:]}") from None
        if attempt or not np or not launcher_failed(proc.returncode, out + err):
            break
        print(f"mpirun failed to start ({LAUNCHER_RACE}); launching again", flush=True)  # nothing ran
    return Result(proc.returncode, out, err)


def ok(result: Result) -> Result:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.output[-6000:]}"
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_params(run: Path) -> dict:
    import torch
    last = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    return torch.load(last, weights_only=False)["model"]
