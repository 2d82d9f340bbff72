#!/usr/bin/env python3
"""The network half of benchmarks/cluster.py: namespaces, veths, a bridge and tbf shaping, and teardown.

One "switch" namespace holds bridge br0; node i's namespace holds veth eth0 (address i+1 in the subnet),
whose peer p{i} sits on br0. Each veth end is shaped with tbf, so every node has its own full-duplex link.
Nothing here creates, changes or addresses an interface outside these namespaces. Exercised by
tests/test_cluster.py through cluster.py.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

# Any single ip/tc/kill step should take milliseconds; this only guards against a wedged kernel or tool.
STEP_TIMEOUT_S = 20.0
# After SIGTERM, how long processes left in a namespace get before SIGKILL.
KILL_GRACE_S = 2.0
NS_NAME = re.compile(r"^(?P<prefix>[A-Za-z0-9_.]+)-(?:sw|n\d+)$")


class ClusterError(RuntimeError):
    """A set-up step failed; the message says what and how to fix it."""


@dataclass(frozen=True)
class Topology:
    prefix: str
    nodes: int
    slots: int
    subnet: ipaddress.IPv4Network
    rate: str | None  # tc rate such as "1gbit"; None = unshaped
    burst: str
    latency: str
    mtu: int = 1500  # Ethernet's default; 9000 models the jumbo frames many HPC networks use

    @property
    def switch_ns(self) -> str:
        return f"{self.prefix}-sw"

    def node_ns(self, i: int) -> str:
        return f"{self.prefix}-n{i}"

    def address(self, i: int) -> str:
        return str(self.subnet.network_address + i + 1)

    def namespaces(self) -> list[str]:
        """Creation order: the switch first, then the nodes (teardown goes in reverse)."""
        return [self.switch_ns] + [self.node_ns(i) for i in range(self.nodes)]


# ----------------------------------------------------------------------------------------------- helpers

def log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def run_step(argv: Sequence[str], timeout: float = STEP_TIMEOUT_S) -> str:
    """Runs one short system command; raises ClusterError with its stderr when it fails."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from None
    except FileNotFoundError:
        raise ClusterError(f"`{argv[0]}` not found: install iproute2 (ip, tc)") from None
    if done.returncode != 0:
        raise ClusterError(f"`{shlex.join(argv)}` failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def existing_namespaces() -> set[str]:
    # `ip netns list` prints "name" or "name (id: 3)" per line.
    return {line.split()[0] for line in run_step(["ip", "netns", "list"]).splitlines() if line.strip()}


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise ClusterError("network namespaces need root: run as root (or with sudo)")
    for tool in ("ip", "tc", "unshare"):
        if shutil.which(tool) is None:
            raise ClusterError(f"`{tool}` not found on PATH: install iproute2 / util-linux")
    existing_namespaces()  # fails clearly when `ip netns` is not supported here


def check_names_free(topo: Topology) -> None:
    taken = sorted(set(topo.namespaces()) & existing_namespaces())
    if taken:
        raise ClusterError(
            f"namespace(s) {', '.join(taken)} already exist: another run may be using them. Choose another "
            f"--prefix, or if they are leftovers of a crashed run: {sys.argv[0]} --cleanup-stale --prefix "
            f"{topo.prefix}")


# -------------------------------------------------------------------------------------------- topology

def shape_link(ns: str, dev: str, topo: Topology) -> None:
    if topo.rate is None:
        return
    run_step(in_ns(ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", topo.rate,
                   "burst", topo.burst, "latency", topo.latency))


def add_namespace(ns: str, created: list[str]) -> None:
    run_step(["ip", "netns", "add", ns])
    created.append(ns)  # recorded at once, so teardown removes it even if a later step fails
    run_step(["ip", "-n", ns, "link", "set", "lo", "up"])


def build_switch(topo: Topology, created: list[str]) -> None:
    sw = topo.switch_ns
    add_namespace(sw, created)
    run_step(["ip", "-n", sw, "link", "add", "br0", "type", "bridge"])
    run_step(["ip", "-n", sw, "link", "set", "br0", "up"])


def build_node(topo: Topology, i: int, created: list[str]) -> None:
    """Node i: eth0 in its namespace, its peer p{i} on the switch's bridge, both directions shaped."""
    ns, sw, port = topo.node_ns(i), topo.switch_ns, f"p{i}"
    add_namespace(ns, created)
    # Created inside the switch namespace and moved straight into the node's: never in the host's.
    run_step(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns])
    run_step(["ip", "-n", sw, "link", "set", port, "mtu", str(topo.mtu)])
    run_step(["ip", "-n", ns, "link", "set", "eth0", "mtu", str(topo.mtu)])
    run_step(["ip", "-n", sw, "link", "set", port, "master", "br0", "up"])
    run_step(["ip", "-n", ns, "addr", "add", f"{topo.address(i)}/{topo.subnet.prefixlen}", "dev", "eth0"])
    run_step(["ip", "-n", ns, "link", "set", "eth0", "up"])
    shape_link(ns, "eth0", topo)
    shape_link(sw, port, topo)


def write_hosts_files(topo: Topology) -> None:
    """/etc/netns/<ns>/hosts is bind-mounted over /etc/hosts by `ip netns exec <ns>`: node names resolve
    to their eth0 addresses inside the cluster only (PRRTE resolves hostfile names)."""
    lines = ["127.0.0.1 localhost"] + [f"{topo.address(i)} {topo.node_ns(i)}" for i in range(topo.nodes)]
    for i in range(topo.nodes):
        d = Path("/etc/netns") / topo.node_ns(i)
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts").write_text("\n".join(lines) + "\n")


def build_cluster(topo: Topology, created: list[str]) -> None:
    build_switch(topo, created)
    for i in range(topo.nodes):
        build_node(topo, i, created)
    write_hosts_files(topo)


def ns_pids(ns: str) -> list[int]:
    try:
        out = run_step(["ip", "netns", "pids", ns])
    except ClusterError:
        return []
    return [int(p) for p in out.split()]


def kill_ns_processes(ns: str) -> None:
    """Ends everything still running in ns: an mpirun timeout does not stop ranks on other nodes."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ns_pids(ns)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + KILL_GRACE_S
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = ns_pids(ns)
        if not pids:
            return
    if ns_pids(ns):
        log(f"warning: processes {ns_pids(ns)} survive SIGKILL in {ns}")


def remove_namespace(ns: str) -> None:
    kill_ns_processes(ns)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
    try:
        run_step(["ip", "netns", "del", ns])
    except ClusterError as e:
        log(f"warning: {e}")


def teardown(created: list[str]) -> None:
    """Never raises: removes every namespace in `created`, nodes before the switch."""
    for ns in reversed(created):
        remove_namespace(ns)
    try:
        etc = Path("/etc/netns")
        if etc.is_dir() and not any(etc.iterdir()):
            etc.rmdir()
    except OSError:
        pass
    left = set(created) & existing_namespaces()
    if left:
        log(f"error: could not remove {sorted(left)}; remove with `ip netns del NAME`")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_namespaces(prefix: str | None) -> list[str]:
    """Namespaces of --prefix, or without one, of `nrt<pid>` runs whose pid is no longer alive."""
    stale = []
    for ns in sorted(existing_namespaces()):
        m = NS_NAME.match(ns)
        if not m:
            continue
        p = m["prefix"]
        if prefix is not None:
            if p == prefix:
                stale.append(ns)
        elif (d := re.fullmatch(r"nrt(\d+)", p)) and not pid_alive(int(d[1])):
            stale.append(ns)
    # Nodes before switches, so no veth is left dangling mid-way.
    return sorted(stale, key=lambda n: n.endswith("-sw"))
