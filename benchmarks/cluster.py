#!/usr/bin/env python3
"""Emulate an N-node cluster on this one machine and run a command under mpirun across it.

What it builds (as root, with `ip` and `tc`):

    switch namespace  <prefix>-sw : bridge br0, ports p0..p{N-1}       (tbf-shaped: switch -> node)
    node namespaces   <prefix>-n{i}: veth eth0 = 10.77.0.{i+1}/24, lo  (tbf-shaped: node -> switch)

Each node gets its own full-duplex link of `--rate` (token bucket filter on both ends of its veth), so a
ring all-reduce sees the per-node bandwidth of a real cluster rather than one shared bus. mpirun runs inside
node 0's namespace with a generated hostfile whose host names are the node namespaces, and a generated
stand-in for ssh (`--prtemca plm_ssh_agent`) that starts PRRTE's daemon on a node with
`ip netns exec <node-ns> unshare --uts` (each node also gets its own host name). Transports are restricted
to TCP over eth0, with yield-when-idle and no binding (docs/design.md, "How we measure", says why).

Usage:

    sudo python benchmarks/cluster.py --nodes 4 --rate 1gbit -- python benchmarks/allreduce.py --sizes 64M
    sudo python benchmarks/cluster.py --nodes 2 --rate none -- python benchmarks/net_probe.py
    sudo python benchmarks/cluster.py --cleanup-stale        # remove leftovers of a crashed run

Options worth knowing: `--slots K` (ranks per node), `--timeout S` (whole run; exit 124 when it expires),
`--prefix P` (namespace names; default `nrt<pid>`), `--mpi-args "ARGS"` (extra mpirun arguments, split like a
shell would, repeatable), `--tcp-put` (keep Open MPI's emulated RDMA put over TCP; see Caveats),
`-x NAME` (extra environment variable for the ranks, repeatable). The topology summary goes to stderr,
the command's output is streamed unchanged, and the exit status is the command's. The ranks see
MASTER_ADDR = node 0's address, MASTER_PORT (default 29500) and GLOO_SOCKET_IFNAME=eth0 for torch/gloo,
and each node's host name resolves to its eth0 address (via /etc/netns/<ns>/hosts, removed afterwards).

Safety: every address lives inside namespaces this script creates (10.77.0.0/24 by default, private);
no interface outside them is created, changed or addressed. It refuses to start if any of its namespace
names already exists, and always tears down what it created (killing every process left in those
namespaces first) on success, failure, timeout, Ctrl-C or SIGTERM. It deletes only namespaces it created
itself, or, with --cleanup-stale, leftovers of its own prefix whose creating process is gone.

Measured here (2 cores shared with other jobs, 64 MB, median of 5, benchmarks/net_probe.py; tcp put off):
at 1gbit a ring-shift Sendrecv moves 0.113-0.120 GB/s per node (2 and 4 nodes; the link's ceiling is 0.125),
MPI_Allreduce busbw is 0.114 GB/s on 2 nodes and 0.100-0.107 GB/s on 4 (neptune_rt's ring: 0.115).
Unshaped, the CPUs are the limit and results swing with other load: Sendrecv 0.5-1.5 GB/s on 2 nodes,
0.3-0.6 GB/s on 4; MPI_Allreduce busbw 0.5-0.85 and 0.25-0.43 GB/s.

Caveats. All emulated nodes share this machine's cores: when ranks outnumber cores, anything that needs a
rank on a CPU to keep data flowing runs slower than on a real cluster. Open MPI's TCP BTL emulates RDMA put
for large messages, and that halves a pairwise exchange (both directions on one connection) under such
contention: 4 nodes at 1gbit measured 60 vs 118 MB/s, and MPI_Allreduce's default algorithm 0.069 vs
0.10 GB/s busbw. So by default the TCP BTL runs send/receive only (`btl_tcp_flags`), which matches what a
real one-rank-per-node cluster gets; `--tcp-put` restores Open MPI's default. With `--slots` > 1, ranks on
the same node talk TCP over loopback (unshaped; no shared-memory transport). PRRTE sometimes prints
"plm:ssh: Warning: setpgid(...) failed ... Permission denied": a harmless race in its launcher.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from netns_topology import (KILL_GRACE_S, ClusterError, Topology, build_cluster, check_names_free,
                            check_prerequisites, in_ns, log, stale_namespaces, teardown)

TIMEOUT_EXIT_CODE = 124  # same as coreutils `timeout`
DEFAULT_PREFIX = f"nrt{os.getpid()}"

# Environment the ranks need; the agent inherits mpirun's environment anyway, but with `-x` the command
# line says what the ranks depend on and it keeps working if the agent is ever replaced by a real ssh.
PASSTHROUGH_ENV = ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONUNBUFFERED",
                   "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "OMP_NUM_THREADS",
                   "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")


# Open MPI's TCP BTL default is "send,put,inplace,need-ack,need-csum,hetero-rdma"; dropping the emulated
# put avoids an artifact of nodes sharing cores (see Caveats above).
TCP_FLAGS_WITHOUT_PUT = "send,inplace,need-ack,need-csum"


# ------------------------------------------------------------------------------------------ the launch

AGENT_TEMPLATE = """#!/bin/sh
# Generated by benchmarks/cluster.py: stands in for ssh. PRRTE calls `AGENT HOST CMD...`; CMD is shell text.
host="$1"; shift
case "$host" in
  {cases}) ;;
  *) echo "cluster agent: unknown host '$host' (known: {known})" >&2; exit 255 ;;
esac
exec ip netns exec "$host" unshare --uts -- sh -c 'hostname "$0" && exec sh -c "$*"' "$host" "$@"
"""


def write_launch_files(topo: Topology, workdir: Path) -> tuple[Path, Path]:
    names = [topo.node_ns(i) for i in range(topo.nodes)]
    hostfile = workdir / "hostfile"
    hostfile.write_text("".join(f"{n} slots={topo.slots}\n" for n in names))
    agent = workdir / "agent.sh"
    agent.write_text(AGENT_TEMPLATE.format(cases="|".join(names), known=" ".join(names)))
    agent.chmod(0o755)
    return hostfile, agent


def rank_env(env: dict[str, str], extra: Sequence[str]) -> list[str]:
    """Names passed with -x: the standard set, every NEPTUNE_RT_* knob, and the user's -x."""
    names = [n for n in PASSTHROUGH_ENV if n in env]
    names += sorted(n for n in env if n.startswith("NEPTUNE_RT_"))
    return list(dict.fromkeys(names + list(extra)))


def mpirun_argv(topo: Topology, mpirun: str, hostfile: Path, agent: Path, env_names: Sequence[str],
                extra_args: Sequence[str], command: Sequence[str]) -> list[str]:
    argv = [mpirun, "--hostfile", str(hostfile), "-np", str(topo.nodes * topo.slots),
            "--prtemca", "plm_ssh_agent", str(agent),
            "--mca", "pml", "ob1", "--mca", "btl", "tcp,self",
            "--mca", "btl_tcp_if_include", "eth0", "--mca", "oob_tcp_if_include", "eth0",
            "--prtemca", "oob_tcp_if_include", "eth0",
            "--mca", "mpi_yield_when_idle", "1", "--bind-to", "none"]
    if topo.slots > 1:
        argv += ["--map-by", "slot"]
    for name in env_names:
        argv += ["-x", name]
    return argv + list(extra_args) + list(command)


def mpi_extra_args(args: argparse.Namespace) -> list[str]:
    extra = [] if args.tcp_put else ["--mca", "btl_tcp_flags", TCP_FLAGS_WITHOUT_PUT]
    return extra + [a for chunk in args.mpi_args for a in chunk]


def find_mpirun(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [str(Path(sys.executable).parent / "mpirun"), shutil.which("mpirun")]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return str(Path(c).absolute())
    raise ClusterError("mpirun not found: run `make build` (venv Open MPI) or pass --mpirun PATH")


def launch_env(mpirun: str, topo: Topology) -> dict[str, str]:
    """The ranks find python/prted through PATH: put mpirun's bin directory first. torch.distributed
    rendezvous goes to node 0 (the only MASTER_ADDR that works inside the cluster) over eth0."""
    env = dict(os.environ)
    env["MASTER_ADDR"] = topo.address(0)
    env.setdefault("MASTER_PORT", "29500")
    env.setdefault("GLOO_SOCKET_IFNAME", "eth0")
    bindir = str(Path(mpirun).parent)
    env["PATH"] = os.pathsep.join([bindir] + [p for p in env.get("PATH", "").split(os.pathsep) if p != bindir])
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
    env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_streaming(argv: list[str], env: dict[str, str], timeout: float) -> int:
    """Runs argv in its own session with output passed straight through; TIMEOUT_EXIT_CODE on timeout.
    On any exit path the whole process group is killed (teardown then ends the other namespaces)."""
    proc = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"error: command still running after --timeout {timeout:.0f} s; killing it")
        return TIMEOUT_EXIT_CODE
    finally:
        if proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=KILL_GRACE_S)
                    break
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break


def print_summary(topo: Topology, mpirun_cmd: Sequence[str]) -> None:
    rate = topo.rate or "unshaped"
    shaping = f"tbf rate {topo.rate} burst {topo.burst} latency {topo.latency}, both directions, mtu {topo.mtu}" \
        if topo.rate else "no shaping"
    log(f"{topo.nodes} nodes x {topo.slots} slot(s), link {rate} per node ({shaping}); "
        f"switch {topo.switch_ns} (br0), subnet {topo.subnet}")
    for i in range(topo.nodes):
        log(f"  {topo.node_ns(i)}  eth0 {topo.address(i)}  <->  {topo.switch_ns}:p{i}")
    log(f"launch (in {topo.node_ns(0)}): {shlex.join(mpirun_cmd)}")


# ------------------------------------------------------------------------------------------------- CLI

@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """A second Ctrl-C must not cut a teardown short and leave namespaces behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = [signal.signal(s, signal.SIG_IGN) for s in sigs]
    try:
        yield
    finally:
        for s, h in zip(sigs, old):
            signal.signal(s, h)


class Terminated(Exception):
    """SIGTERM/SIGHUP turned into an exception so the `finally` that tears down still runs."""


def on_signal(signum: int, _frame: object) -> None:
    raise Terminated(signal.Signals(signum).name)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s [options] -- COMMAND [ARGS...]")
    p.add_argument("--nodes", type=int, default=4, help="emulated nodes (default 4)")
    p.add_argument("--slots", type=int, default=1, help="ranks per node (default 1)")
    p.add_argument("--rate", default="1gbit", help="per-node link rate as tc writes it, or 'none' (default 1gbit)")
    p.add_argument("--burst", default="256kb", help="tbf burst (default 256kb)")
    p.add_argument("--latency", default="50ms", help="tbf latency, i.e. max queueing (default 50ms)")
    p.add_argument("--mtu", type=int, default=1500,
                   help="link MTU (default 1500; 9000 = jumbo frames: TCP headers cost 0.6%% instead of 4.4%%)")
    p.add_argument("--subnet", default="10.77.0.0/24", help="private subnet inside the namespaces")
    p.add_argument("--prefix", default=None, help="namespace name prefix (default nrt<pid>)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds before the run is killed (default 600)")
    p.add_argument("--mpirun", default=None, help="mpirun to use (default: the venv's, then PATH)")
    p.add_argument("--mpi-args", action="append", default=[], type=shlex.split,
                   help="extra mpirun arguments as one string, e.g. \"--mca coll_tuned_use_dynamic_rules 1\"")
    p.add_argument("--tcp-put", action="store_true",
                   help="keep the TCP BTL's emulated RDMA put (Open MPI's default; see Caveats in the module "
                        "docstring)")
    p.add_argument("-x", dest="env", action="append", default=[], help="extra env var for the ranks")
    p.add_argument("--cleanup-stale", action="store_true",
                   help="remove leftover namespaces (of --prefix, or of dead nrt<pid> runs) and exit")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command run by every rank (after --)")
    args = p.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.cleanup_stale and not args.command:
        p.error("no command given: put it after --, e.g. -- python -c 'print(1)'")
    if args.nodes < 1 or args.slots < 1:
        p.error(f"--nodes and --slots must be >= 1 (got {args.nodes}, {args.slots})")
    if args.prefix is not None and not re.fullmatch(r"[A-Za-z0-9_.]{1,10}", args.prefix):
        p.error(f"invalid --prefix {args.prefix!r}: use 1-10 letters, digits, '_' or '.'")
    try:
        subnet = ipaddress.ip_network(args.subnet, strict=True)
    except ValueError as e:
        p.error(f"invalid --subnet {args.subnet!r}: {e} (e.g. 10.77.0.0/24)")
    if subnet.version != 4 or not subnet.is_private or subnet.num_addresses < args.nodes + 2:
        p.error(f"--subnet {subnet} must be a private IPv4 subnet with room for {args.nodes} nodes")
    args.subnet = subnet
    return args


def cleanup_stale(prefix: str | None) -> int:
    """--cleanup-stale: leftovers of a crashed run (a live run's namespaces are never touched)."""
    stale = stale_namespaces(prefix)
    if not stale:
        log("no stale namespaces found")
    for ns in stale:
        log(f"removing {ns}")
    teardown(stale[::-1])  # teardown walks its list in reverse
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    topo = Topology(prefix=args.prefix or DEFAULT_PREFIX, nodes=args.nodes, slots=args.slots,
                    subnet=args.subnet, rate=None if args.rate.lower() == "none" else args.rate,
                    burst=args.burst, latency=args.latency, mtu=args.mtu)
    mpirun = find_mpirun(args.mpirun)
    check_names_free(topo)
    created: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"{topo.prefix}-") as tmp:
        try:
            build_cluster(topo, created)
            hostfile, agent = write_launch_files(topo, Path(tmp))
            env = launch_env(mpirun, topo)
            cmd = mpirun_argv(topo, mpirun, hostfile, agent, rank_env(env, args.env),
                              mpi_extra_args(args), args.command)
            print_summary(topo, cmd)
            return run_streaming(in_ns(topo.node_ns(0), *cmd), env, args.timeout)
        finally:
            with signals_ignored():
                teardown(created)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        check_prerequisites()
        if args.cleanup_stale:
            return cleanup_stale(args.prefix)
        return run_cluster(args)
    except ClusterError as e:
        log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        log("interrupted; cluster torn down")
        return 130
    except Terminated as e:
        log(f"{e}; cluster torn down")
        return 143


if __name__ == "__main__":
    sys.exit(main())
