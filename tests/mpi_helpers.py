"""Launching real MPI jobs from pytest: `run_mpi(script, np)` runs a worker under mpirun with a hard timeout
and returns its completed process; `assert_ok` checks that every rank reported success."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class MpiResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def mpirun_path() -> str | None:
    venv_mpirun = Path(sys.executable).parent / "mpirun"
    return str(venv_mpirun) if venv_mpirun.exists() else shutil.which("mpirun")


def mpi_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env.get('PYTHONPATH', '')}"
    env.setdefault("OMP_NUM_THREADS", "1")
    # Ranks outnumber the 2 cores here: yield instead of busy-polling, or waiting ranks starve the others.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env.update(extra or {})
    return env


def run_mpi(script: str | Path, np: int, *args: str, timeout: float = 180,
            env: dict[str, str] | None = None) -> MpiResult:
    """Runs `python script args` on `np` ranks; a hang fails the test after `timeout` seconds, and the
    whole process group is killed so that no rank outlives the test."""
    mpirun = mpirun_path()
    if mpirun is None:
        raise RuntimeError("mpirun not found: run `make test` (it installs Open MPI into .venv)")
    path = Path(script)
    if not path.is_absolute():
        path = WORKERS / path
    cmd = [mpirun, "-np", str(np), "--oversubscribe", "--bind-to", "none", sys.executable, str(path),
           *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=mpi_env(env), stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"mpirun -np {np} {path.name} {' '.join(map(str, args))} hung for {timeout} s:\n"
                             f"{out[-3000:]}\n{err[-3000:]}") from None
    result = MpiResult(proc.returncode, out, err)
    if "not enough slots" in result.output:
        raise AssertionError(f"mpirun refused to start {np} ranks:\n{err}")
    return result


def assert_ok(proc: MpiResult, np: int, marker: str = "OK") -> None:
    """Every rank printed a line starting with `marker` and mpirun exited 0."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out[-6000:]}"
    oks = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    assert len(oks) == np, f"expected {np} '{marker}' lines, got {len(oks)}:\n{out[-6000:]}"
