"""``star-merge adapters``: the model types with a permutation adapter, and the heads each covers."""

from __future__ import annotations

from dataclasses import dataclass

from ..adapters import supported_model_types
from ..adapters.heads import supported_heads
from ..argparsing import add_command

__all__ = ["AdaptersArguments", "make_parser", "run"]


@dataclass
class AdaptersArguments:
    """``star-merge adapters`` takes no arguments."""


def make_parser(subparsers):
    return add_command(subparsers, "adapters", [AdaptersArguments], run,
                       help="list the model types with a permutation adapter")


def run(args: AdaptersArguments) -> int:
    types = supported_model_types()
    width = max(map(len, types), default=0)
    for t in types:  # one line per model type: the type, then the model classes (heads) its adapter covers
        print(f"{t:<{width}}  {' '.join(supported_heads(t)) or '(heads not declared)'}")
    return 0
