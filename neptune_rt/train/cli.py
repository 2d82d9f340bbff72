"""`neptune-rt train | make-csv | report | status`: the command-line front door. `train` runs under mpirun;
every flag has a `--config FILE` (TOML) key of the same name. Bad input (config, data, checkpoint) ends every
rank with exit status 2 and one clear message from rank 0, before any run file is written where possible.
Exercised by tests/train/test_cli.py and tests/train/test_csv_data.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["add_commands", "run_command"]

BAD_INPUT = 2


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


def _fail(message: str) -> int:
    if _rank() == 0:  # every rank meets the same bad input; one message is enough
        print(f"neptune-rt: error: {message}", file=sys.stderr, flush=True)
    # The launcher ends the job at the first non-zero exit, message or not: the other ranks leave only once rank
    # 0 has written it. With MPI up, a barrier says so (bounded: a rank that failed otherwise must not hang us);
    # before MPI_Init there is nothing to wait on, so they give rank 0 a head start.
    if not _barrier(timeout_s=10.0) and _rank() != 0:
        import time
        time.sleep(5)
    return BAD_INPUT


def _barrier(timeout_s: float) -> bool:
    """MPI_Ibarrier on COMM_WORLD, polled until `timeout_s`; False when MPI is not running or it timed out."""
    mpi_module = sys.modules.get("mpi4py.MPI")
    if mpi_module is None or not mpi_module.Is_initialized() or mpi_module.Is_finalized():
        return False
    import time
    request = mpi_module.COMM_WORLD.Ibarrier()
    deadline = time.monotonic() + timeout_s
    while not request.Test():
        if time.monotonic() > deadline:
            return False  # the request stays posted; the process is about to exit anyway
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
    from neptune_rt.train.workload import run_workload
    result = run_workload(config)
    if _rank() == 0:
        acc = result["test_accuracy"]
        print(f"final test accuracy: {acc * 100:.2f}%  ({result['steps']} steps, {result['samples']} samples, "
              f"{result['wall_s']:.1f} s, communication {result['comm_share'] * 100:.0f}% of step time, "
              f"checkpoints {result['checkpoint_s']:.2f} s)\nrun directory: {result['run_dir']}  "
              f"(neptune-rt report {result['run_dir']})", flush=True)
    return 0
