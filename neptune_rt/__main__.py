"""Command line: `neptune-rt info | train | make-csv | report | status` (also `python -m neptune_rt ...`).
The training commands live in neptune_rt/train/cli.py."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neptune-rt", description="neptune_rt runtime tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, MPI, thread level, compiled features, codecs, settings")
    from neptune_rt.train.cli import add_commands, run_command
    add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "info":
        from neptune_rt import info
        info.main()
        return 0
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
