"""The one mpirun launcher of the test suite (tests/ and tests/torch/): `run_mpi(script, np)` runs a worker
under mpirun in its own session with a hard timeout; on a hang it kills the whole process group (mpirun and
every rank, stopped ones included) and fails with the output so far. `assert_ok` checks that every rank
reported success, `assert_part_passed` that every rank passed one part of a launch that runs several.
Exercised by every MPI test; tests/test_failures.py relies on the hang handling."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

WORKERS = Path(__file__).parent / "workers"
TORCH_WORKERS = Path(__file__).parent / "torch" / "workers"
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    # torch workers compare against a gloo process group of their own.
    env["MASTER_ADDR"] = "127.0.0.1"
    env["MASTER_PORT"] = str(free_port())
    env.update(extra or {})
    return env


def _kill_group(pgid: int) -> None:
    """SIGKILL the launcher's process group; a stopped (SIGSTOP) rank dies of SIGKILL too."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# Open MPI's launcher sometimes fails before any rank starts (exit 213, this message; seen twice on 2026-12-01,
# both times just after an emulated cluster's network namespaces were torn down). Nothing has run then, so
# the helpers launch such a job once more rather than fail the test on the launcher's start-up race.
LAUNCHER_RACE = "The PMIx server's listener thread failed to start"


def launcher_failed(returncode: int, output: str) -> bool:
    return returncode != 0 and LAUNCHER_RACE in output


def launch(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[MpiResult, bool]:
    """One mpirun command line, any form (MPMD too): (result, hung); the process group is killed after `timeout`
    s and at the end. Output goes to files, not pipes: a rank that outlives mpirun (stopped, orphaned) cannot
    hold them open and block the read, and whatever was written before a hang is still there to report."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            hung = False
        except subprocess.TimeoutExpired:
            hung = True
        _kill_group(proc.pid)  # also after a normal end: no rank of this job may linger
        proc.wait()
        out.seek(0)
        err.seek(0)
        return MpiResult(proc.returncode, out.read(), err.read()), hung


def run_mpi(script: str | Path, np: int, *args: str, timeout: float = 180,
            env: dict[str, str] | None = None, workers: Path = WORKERS) -> MpiResult:
    """Runs `python script args` on `np` ranks (`script` relative to `workers` unless absolute); a hang
    fails the test after `timeout` seconds with the output so far, and the whole process group is killed
    so that no rank outlives the test."""
    mpirun = mpirun_path()
    if mpirun is None:
        raise RuntimeError("mpirun not found: run `make test` (it installs Open MPI into .venv)")
    path = Path(script)
    if not path.is_absolute():
        path = workers / path
    cmd = [mpirun, "-np", str(np), "--oversubscribe", "--bind-to", "none", sys.executable, str(path),
           *map(str, args)]
    full_env = mpi_env(env)
    result, hung = launch(cmd, full_env, timeout)
    if not hung and launcher_failed(result.returncode, result.output):
        print(f"mpirun failed to start ({LAUNCHER_RACE}); launching again", flush=True)
        result, hung = launch(cmd, full_env, timeout)
    if hung:
        raise AssertionError(f"mpirun -np {np} {path.name} {' '.join(map(str, args))} hung for {timeout} s "
                             f"(process group killed):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    if "not enough slots" in result.output:
        raise AssertionError(f"mpirun refused to start {np} ranks:\n{result.stderr}")
    return result


def run_workers(script: str, np: int, *args: str, timeout: float = 120,
                env: dict[str, str] | None = None) -> MpiResult:
    """run_mpi for the torch workers (tests/torch/workers)."""
    return run_mpi(script, np, *args, timeout=timeout, env=env, workers=TORCH_WORKERS)


def assert_ok(proc: MpiResult, np: int, marker: str = "OK") -> list[str]:
    """mpirun exited 0 and every rank printed a line starting with `marker`; returns those lines."""
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.output[-8000:]}"
    return assert_part_passed(proc, marker, np)


def assert_part_passed(proc: MpiResult, marker: str, np: int) -> list[str]:
    """Every rank printed a line starting with `marker`: that part of a launch running several passed, whatever
    a later part did (so each part's test fails for its own part only). The exit status is the caller's.
    Returns those lines."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    assert len(lines) == np, f"{marker!r}: {len(lines)} of {np} ranks passed (exit {proc.returncode}):\n" \
                             f"{proc.output[-8000:]}"
    return lines
