"""Launching real MPI jobs from pytest: `run_mpi(script, np)` runs a worker under mpirun with a hard timeout
and returns its completed process; `assert_ok` checks that every rank reported success."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parent.parent


def mpirun_path() -> str:
    venv_mpirun = Path(sys.executable).parent / "mpirun"
    found = str(venv_mpirun) if venv_mpirun.exists() else shutil.which("mpirun")
    if not found:
        raise RuntimeError("mpirun not found: run `make test` (it installs Open MPI into .venv)")
    return found


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra or {})
    return env


def run_mpi(script: str | Path, np: int, *args: str, timeout: float = 180,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs `python script args` on `np` ranks; a hang fails the test after `timeout` seconds."""
    path = Path(script)
    if not path.is_absolute():
        path = WORKERS / path
    cmd = [mpirun_path(), "-np", str(np), "--oversubscribe", "--bind-to", "none",
           sys.executable, str(path), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env(env),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"mpirun -np {np} {path.name} {' '.join(args)} hung for {timeout} s:\n"
                             f"{(err.stdout or b'')[-3000:]!r}\n{(err.stderr or b'')[-3000:]!r}") from None
    if "not enough slots" in proc.stdout + proc.stderr:
        raise AssertionError(f"mpirun refused to start {np} ranks:\n{proc.stderr}")
    return proc


def assert_ok(proc: subprocess.CompletedProcess, np: int, marker: str = "OK") -> None:
    """Every rank printed a line starting with `marker` and mpirun exited 0."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"
    oks = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    assert len(oks) == np, f"expected {np} '{marker}' lines, got {len(oks)}:\n{out[-6000:]}"
