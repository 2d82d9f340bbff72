"""Launch a worker script under `mpirun -np N --oversubscribe` with a hard timeout (shared by MPI tests).

A test calls run_mpi(n, script, *args) and asserts on the returned exit code and output; on timeout the whole
process group is killed so no rank outlives the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"


@dataclass
class MpiResult:
    returncode: int
    output: str


def mpirun_path() -> str | None:
    venv_bin = Path(sys.executable).parent
    return shutil.which("mpirun", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")


def run_mpi(nprocs: int, script: str | Path, *args: str, timeout: float = 120.0) -> MpiResult:
    """Run `python script args...` on `nprocs` ranks; returns exit code and combined output."""
    mpirun = mpirun_path()
    if mpirun is None:
        raise RuntimeError("mpirun not found: run `make build` (it installs Open MPI into .venv)")
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    # Ranks outnumber the 2 cores here: yield instead of busy-polling, or waiting ranks starve the others.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [mpirun, "-np", str(nprocs), "--oversubscribe", sys.executable, str(script), *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return MpiResult(-1, f"TIMEOUT after {timeout}s\n{out}")
    return MpiResult(proc.returncode, out)
