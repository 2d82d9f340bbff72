"""Smoke tests of benchmarks/cluster.py, the emulated multi-node cluster (network namespaces + tbf).

Needs root and `ip netns`; each test builds at most 2 nodes and finishes in seconds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mpi_helpers import launcher_failed

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "benchmarks" / "cluster.py"
PREFIX = f"nt{os.getpid() % 10**6}"  # + 2 hex digits per test: at most 10 characters, as cluster.py wants


def ip_netns_usable() -> bool:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=10).returncode == 0


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not ip_netns_usable(), reason="`ip netns` / `tc` not available here"),
]


def namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout
    return sorted(n for n in (line.split()[0] for line in out.splitlines() if line.strip())
                  if n.startswith(prefix + "-"))


def run_cluster(*args: str, timeout: float = 50.0) -> subprocess.CompletedProcess[str]:
    """Runs cluster.py with the test's python; mpirun/ranks come from the same venv."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONUNBUFFERED="1")
    for attempt in range(2):
        done = subprocess.run([sys.executable, str(CLUSTER), *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=REPO)
        if attempt or not launcher_failed(done.returncode, done.stdout + done.stderr):
            return done  # else Open MPI's launcher failed before any rank ran (mpi_helpers.LAUNCHER_RACE)
        print(f"cluster.py: retrying after Open MPI's launcher failed to start:\n{done.stderr[-500:]}")
    return done


@pytest.fixture
def prefix():
    """A fresh prefix per test; whatever a failing test leaves behind is removed."""
    p = f"{PREFIX}{os.urandom(1).hex()}"
    yield p
    for ns in namespaces(p):
        subprocess.run(["ip", "netns", "del", ns], timeout=10)


ALLREDUCE_SCRIPT = textwrap.dedent("""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    x = np.full(1 << 16, comm.rank + 1, dtype=np.float32)
    comm.Allreduce(MPI.IN_PLACE, x, op=MPI.SUM)
    hosts = comm.gather(MPI.Get_processor_name(), root=0)
    expected = comm.size * (comm.size + 1) / 2
    if comm.rank == 0:
        print(f"allreduce ok={bool(np.all(x == expected))} size={comm.size} hosts={','.join(sorted(hosts))}")
""")


def test_two_nodes_allreduce_and_teardown(prefix: str, tmp_path: Path) -> None:
    script = tmp_path / "allreduce.py"
    script.write_text(ALLREDUCE_SCRIPT)
    done = run_cluster("--nodes", "2", "--rate", "1gbit", "--prefix", prefix, "--timeout", "40",
                       "--", sys.executable, str(script))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"allreduce ok=True size=2 hosts={prefix}-n0,{prefix}-n1" in done.stdout, done.stdout + done.stderr
    assert "tbf rate 1gbit" in done.stderr
    assert namespaces(prefix) == []


def test_exit_status_is_the_commands(prefix: str) -> None:
    done = run_cluster("--nodes", "2", "--rate", "none", "--prefix", prefix, "--timeout", "40",
                       "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert done.returncode == 3, done.stdout + done.stderr
    assert namespaces(prefix) == []


def test_timeout_kills_ranks_and_tears_down(prefix: str) -> None:
    done = run_cluster("--nodes", "2", "--prefix", prefix, "--timeout", "3",
                       "--", sys.executable, "-c", "import time; time.sleep(120)")
    assert done.returncode == 124, done.stdout + done.stderr
    assert "--timeout" in done.stderr
    assert namespaces(prefix) == []


def test_refuses_existing_namespace(prefix: str) -> None:
    taken = f"{prefix}-n1"
    subprocess.run(["ip", "netns", "add", taken], timeout=10, check=True)
    done = run_cluster("--nodes", "2", "--prefix", prefix, "--", "true")
    assert done.returncode != 0
    assert f"{taken} already exist" in done.stderr and "--cleanup-stale" in done.stderr, done.stderr
    assert namespaces(prefix) == [taken]  # someone else's namespace is left alone, nothing else created


def test_cleanup_stale_removes_only_its_prefix(prefix: str) -> None:
    for ns in (f"{prefix}-sw", f"{prefix}-n0", f"{prefix}x-n0"):
        subprocess.run(["ip", "netns", "add", ns], timeout=10, check=True)
    try:
        done = run_cluster("--cleanup-stale", "--prefix", prefix)
        assert done.returncode == 0, done.stderr
        assert namespaces(prefix) == []
        assert namespaces(f"{prefix}x") == [f"{prefix}x-n0"]  # a different prefix is not touched
    finally:
        subprocess.run(["ip", "netns", "del", f"{prefix}x-n0"], timeout=10)


def test_allreduce_benchmark_on_two_shaped_nodes(prefix: str, tmp_path: Path) -> None:
    """The suite's own benchmark over the emulated 1 Gbit network: dense and int8 rows, all correct."""
    out = tmp_path / "rows.json"
    done = run_cluster("--nodes", "2", "--rate", "1gbit", "--prefix", prefix, "--timeout", "55",
                       "--", sys.executable, str(REPO / "benchmarks" / "allreduce.py"), "--sizes", "64K,1M",
                       "--codecs", "none,int8", "--impls", "mpi", "--trials", "2", "--link", "1gbit",
                       "--json", str(out), timeout=58)
    assert done.returncode == 0, done.stdout + done.stderr
    import json
    rows = json.loads(out.read_text())
    assert {(r["impl"], r["codec"]) for r in rows} == {("neptune_rt", "none"), ("neptune_rt", "int8"), ("mpi", "none")}
    assert all(r["wrong"] == 0 and r["np"] == 2 and r["link"] == "1gbit" for r in rows), rows
    # The link is shaped: nothing can beat 1 Gbit/s (0.125 GB/s) by much on the wire.
    dense = [r for r in rows if r["codec"] == "none" and r["size_bytes"] == 1 << 20]
    assert all(r["busbw_gbps"] < 0.2 for r in dense), dense
    assert namespaces(prefix) == []
