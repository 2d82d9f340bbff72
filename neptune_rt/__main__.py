"""Command line: `neptune-rt info` (also `python -m neptune_rt info`)."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neptune-rt", description="neptune_rt runtime tools")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="version, MPI, thread level, compiled features, codecs, settings")
    args = parser.parse_args(argv)
    if args.command == "info":
        from neptune_rt import info
        info.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
