"""Launches a tests/torch/workers script under mpirun from pytest (a free MASTER_PORT for the gloo process
group each worker sets up for comparisons) and checks that every rank reported success."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parents[2]


def _mpirun() -> str:
    venv = Path(sys.executable).parent / "mpirun"
    found = str(venv) if venv.exists() else shutil.which("mpirun")
    if not found:
        raise RuntimeError("mpirun not found: run `make build` (it installs Open MPI into .venv)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(script: str, np: int, *args: str, timeout: float = 120,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python workers/script args` on `np` ranks; a hang fails the test after `timeout` seconds."""
    full_env = dict(os.environ)
    full_env.update({
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}",
        "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
        "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{full_env.get('PYTHONPATH', '')}",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
    })
    full_env.update(env or {})
    cmd = [_mpirun(), "-np", str(np), "--oversubscribe", "--bind-to", "none",
           sys.executable, str(WORKERS / script), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        out = (err.stdout or b"")[-4000:], (err.stderr or b"")[-4000:]
        raise AssertionError(f"mpirun -np {np} {script} {' '.join(args)} hung for {timeout} s:\n{out}") from None
    if "not enough slots" in proc.stdout + proc.stderr:
        raise AssertionError(f"mpirun refused to start {np} ranks:\n{proc.stderr}")
    return proc


def assert_ok(proc: subprocess.CompletedProcess, np: int, marker: str = "OK") -> list[str]:
    """mpirun exited 0 and every rank printed a line starting with `marker`; returns those lines."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-8000:]}"
    oks = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    assert len(oks) == np, f"expected {np} '{marker}' lines, got {len(oks)}:\n{out[-8000:]}"
    return oks
