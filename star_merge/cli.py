"""The ``star-merge`` console entry point: adapters, align, barrier, evaluate, export-bma, merge, push.

Every subcommand is a dataclass of arguments parsed by :class:`~star_merge.argparsing.ArgumentsParser` (the
recipes' parser: ``--config file.yaml`` defaults, flags override), added with its module's ``make_parser``
(TRL's pattern; the handlers are in :mod:`star_merge.commands`); errors a user can act on are printed as one line with exit status 2
(:func:`~star_merge.errors.run_reporting_user_errors`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .argparsing import ArgumentsParser
from .errors import run_reporting_user_errors


def build_parser() -> argparse.ArgumentParser:
    """The ``star-merge`` parser; ``parser.commands`` maps each subcommand to its :class:`ArgumentsParser`."""
    from .commands import adapters, align, barrier, evaluate, export_bma, merge, push

    parser = argparse.ArgumentParser(
        prog="star-merge", description="Permutation-aware model merging with Starlight star models."
    )
    parser.add_argument("--version", action="version", version=f"star-merge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentsParser)
    sub.required = True
    for command in (adapters, align, barrier, evaluate, export_bma, merge, push):
        command.make_parser(sub)
    parser.commands = sub.choices
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in parser.commands:
        parser.parse_args(argv)  # --help, --version or a usage error: argparse prints it and exits
        return 2
    command = parser.commands[argv[0]]

    def call() -> int:
        instances, _ = command.parse(argv[1:])
        return command.get_default("func")(*instances)

    return run_reporting_user_errors(call, prog=f"star-merge {argv[0]}")


if __name__ == "__main__":
    sys.exit(main())
