"""``python -m star_merge.evaluation {barrier,evaluate} ...``: the same commands as ``star-merge``."""

from __future__ import annotations

import sys

from ..cli import main as _star_merge_main  # floor 10: this module is an entry point, not the engine

COMMANDS = ("barrier", "evaluate")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return _star_merge_main(argv)


if __name__ == "__main__":
    sys.exit(main())
