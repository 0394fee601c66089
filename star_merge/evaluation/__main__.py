"""``python -m star_merge.evaluation {barrier,evaluate} ...`` (the same commands as ``star-merge``)."""

from __future__ import annotations

import argparse
import sys

from . import barrier, report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m star_merge.evaluation")
    subparsers = parser.add_subparsers(dest="command", required=True)
    barrier.add_parser(subparsers)
    report.add_parser(subparsers)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
