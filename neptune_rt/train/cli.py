"""`neptune-rt train | make-csv | report | status`: the command-line front door. `train` runs under mpirun;
every flag has a `--config FILE` (TOML) key of the same name. Bad input (config, data, checkpoint) ends every
rank with exit status 2 and one clear message (from rank 0, or from a rank that met it alone), before any run file is
written where possible. Exercised by tests/train/test_train_cli.py and tests/train/test_train_csv_data.py.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

__all__ = ["add_commands", "run_command"]

BAD_INPUT = 2
_FAILURE_NOTICE_TAG = 0x4E52  # rank 0 -> the others: the bad-input message is written (see _fail)


def add_commands(sub: argparse._SubParsersAction) -> None:
    from neptune_rt.train.config import add_arguments
    train = sub.add_parser("train", help="train a built-in workload (launch with mpirun)",
                           description="Data-parallel training of a built-in workload. Launch under mpirun, e.g. "
                                       "mpirun -np 4 neptune-rt train --data fashion-mnist --compression int8",
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(train)
    csv = sub.add_parser("make-csv", help="write a csv:DIR data set (DIR/train/*.csv, DIR/test/*.csv)")
    csv.add_argument("dir", help="new (or empty) directory to write")
    csv.add_argument("--source", default="auto", choices=("auto", "fashion-mnist", "digits"),
                     help="auto: Fashion-MNIST when installed, else digits")
    csv.add_argument("--limit", type=int, default=0, help="at most N train rows (and N/6 test rows); 0: all")
    csv.add_argument("--train-files", type=int, default=4, help="number of train CSV files")
    csv.add_argument("--data-dir", default="", help="Fashion-MNIST IDX directory (as for train)")
    report = sub.add_parser("report", help="write RUN/report/report.md and report.html (curves of one or more runs)")
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories; several overlay their curves")
    report.add_argument("--out", default="", help="report directory (default: <first RUN_DIR>/report)")
    status = sub.add_parser("status", help="where a running or finished run stands")
    status.add_argument("run", metavar="RUN_DIR")


def _rank() -> int:
    for var in ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _launcher_world_size() -> int | None:
    """The job's size as the launcher tells it (Open MPI's mpirun, MPICH's Hydra), before MPI_Init; None if unsaid."""
    for var in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def _fail(message: str) -> int:
    """Every rank meets the same bad input; one message is enough, from rank 0. The launcher ends the job at the
    first non-zero exit, message or not, so the other ranks leave only once rank 0 has written it: rank 0 says so
    by a 0-byte message on a tag of its own (point to point, so it can never meet a peer that is already inside
    another collective). A rank that hears nothing within 10 s met bad input alone, and says so itself. Before
    MPI_Init there is nothing to wait on: the other ranks give rank 0 10 s to end the job (the launcher ends it at
    rank 0's exit), and a rank still running then (the data, say, missing on its node only) says so itself."""
    rank = _rank()
    if rank == 0:
        print(f"neptune-rt: error: {message}", file=sys.stderr, flush=True)
    mpi = _mpi_if_running()
    if mpi is None:
        if rank != 0:
            time.sleep(10)
            print(f"neptune-rt: error on rank {rank} (rank 0 did not stop on it): {message}", file=sys.stderr,
                  flush=True)
        return BAD_INPUT
    world = mpi.COMM_WORLD
    if rank == 0:
        sends = [world.Isend([bytearray(), mpi.BYTE], dest=peer, tag=_FAILURE_NOTICE_TAG)
                 for peer in range(1, world.Get_size())]
        _poll(mpi, sends, timeout_s=1.0)  # 0-byte sends complete at once; never wait on a peer for long
    elif _poll(mpi, [world.Irecv([bytearray(), mpi.BYTE], source=0, tag=_FAILURE_NOTICE_TAG)], timeout_s=10.0,
               cancel=True):
        time.sleep(0.5)  # rank 0's line is written; give the launcher a moment to forward it
    else:
        print(f"neptune-rt: error on rank {rank} (rank 0 did not stop on it): {message}", file=sys.stderr, flush=True)
    return BAD_INPUT


def _mpi_if_running():
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is None or not mpi.Is_initialized() or mpi.Is_finalized():
        return None
    return mpi


def _poll(mpi, requests: list, timeout_s: float, cancel: bool = False) -> bool:
    """Tests `requests` until all complete (True) or `timeout_s` passes (False; receives are then cancelled with
    cancel=True, so that no late message lands in them)."""
    deadline = time.monotonic() + timeout_s
    while not mpi.Request.Testall(requests):
        if time.monotonic() > deadline:
            if cancel:
                for request in requests:
                    if request != mpi.REQUEST_NULL:
                        request.Cancel()
            return False
        time.sleep(0.001)
    return True


def run_command(args: argparse.Namespace) -> int:
    from neptune_rt.train.checkpoint import CheckpointError
    from neptune_rt.train.config import ConfigError
    from neptune_rt.train.datasets import DataError
    try:
        if args.command == "train":
            return _train(vars(args))
        if args.command == "make-csv":
            from neptune_rt.train.csv_data import write_csv_dir
            used, n_train, n_test = write_csv_dir(args.dir, args.source, args.train_files, args.limit,
                                                  args.data_dir)
            print(f"wrote {args.dir}/train ({n_train} rows in {args.train_files} files) and {args.dir}/test "
                  f"({n_test} rows) from {used}; train with: mpirun -np 4 neptune-rt train --data csv:{args.dir}")
            return 0
        if args.command == "report":
            from neptune_rt.train.report import write_report
            md, html = write_report([Path(r) for r in args.runs], Path(args.out) if args.out else None)
            print(f"report: {html}\n        {md}")
            return 0
        if args.command == "status":
            from neptune_rt.train.status import describe
            print(describe(Path(args.run)))
            return 0
    except (ConfigError, DataError, CheckpointError) as err:
        return _fail(str(err))
    except ValueError as err:
        if args.command == "train":
            raise
        return _fail(str(err))
    raise AssertionError(args.command)


def _train(cli: dict) -> int:
    from neptune_rt.train.config import load_toml, resolve
    cli = {k: v for k, v in cli.items() if k != "command"}
    base = None
    if cli.get("resume"):
        toml = Path(cli["resume"]) / "config.toml"
        if not toml.exists():
            from neptune_rt.train.checkpoint import CheckpointError
            raise CheckpointError(f"--resume {cli['resume']}: no config.toml there; is it a run directory?")
        base = load_toml(toml)
    config = resolve(cli, base)
    # Bad input is found before torch is imported (seconds of every rank's start-up): the settings that depend on
    # the world size, where the launcher tells it (run_workload checks them again once MPI is up), and the data.
    size = _launcher_world_size()
    if size:
        config.check_world(size)
    if config.resume:  # every rank loads the checkpoint later, so every rank can look at it now
        from neptune_rt.train.checkpoint import resumable
        resumable(Path(config.resume))
    from neptune_rt.train.datasets import load
    data = load(config.data, config.data_dir, config.label_column)
    from neptune_rt.train.workload import run_workload
    result = run_workload(config, data)
    if _rank() == 0:
        acc = result["test_accuracy"]
        print(f"final test accuracy: {acc * 100:.2f}%  ({result['steps']} steps, {result['samples']} samples, "
              f"{result['wall_s']:.1f} s, communication {result['comm_share'] * 100:.0f}% of step time, "
              f"checkpoints {result['checkpoint_s']:.2f} s)\n{gradients_summary(result, config.compression)}"
              f"run directory: {result['run_dir']}  (neptune-rt report {result['run_dir']})", flush=True)
    return 0


def gradients_summary(result: dict, compression: str) -> str:
    """The line (newline-terminated) that says how the gradients travelled: the codecs that carried them and their
    compression, and why, where the cost model sent dense what --compression asked to compress (fp16 and bf16 are
    casts made before the engine, which it always moves dense); "" without engine statistics."""
    from neptune_rt.train.monitor import codecs_by_bytes
    used = result.get("codecs_used")
    if not used or "compression_ratio" not in result or result.get("ranks", 2) <= 1:
        return ""  # no statistics, or one rank: nothing travelled
    shown = codecs_by_bytes(used)
    if compression in ("fp16", "bf16"):  # cast by DistributedOptimizer: the engine moves them dense, no cost model
        return f"gradients sent as {compression} (cast before the engine: 2.0x compression of fp32)\n"
    line = f"gradients sent as {'+'.join(shown)} ({result['compression_ratio']:.1f}x compression)\n"
    if compression != "none" and shown == ["none"]:
        line += (f"  (the cost model found dense faster than --compression {compression} on this link; "
                 f"--force-codec quantizes anyway)\n")
    return line
