"""``star-merge merge MEMBERS... --output_dir DIR``: one checkpoint merged from several, without training."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..argparsing import add_command
from ..data import DataArguments
from ..matching.merge import MERGE_METHODS
from .fields import symmetry_field

__all__ = ["MergeArguments", "make_parser", "run"]


@dataclass
class MergeArguments:
    """``star-merge merge MEMBERS... --output_dir DIR`` (the data flags, for ``--repair``, are
    :class:`~star_merge.data.DataArguments`)."""

    members: list[str] = field(metadata={"positional": True, "metavar": "MEMBERS", "nargs": "+",
                                         "help": "checkpoints to merge: Hub ids (org/name[@rev]), local folders, "
                                                 "population files or run directories (their anchors)"})
    output_dir: str = field(metadata={"aliases": ["--output"], "help": "folder for the merged checkpoint"})
    method: str = field(default="mergemany", metadata={"choices": list(MERGE_METHODS),
                                                       "help": "MergeMany, cycle-consistent (C2M3) or align-to-member-0"})
    weights: list[float] | None = field(default=None, metadata={"help": "one weight per member (default equal)"})
    repair: bool = field(default=False, metadata={"help": "repair statistics over the data: BatchNorm reset, or REPAIR"})
    symmetry: str = symmetry_field("orthogonal: members folded (norm weights 1) and matched with orthogonal maps on the "
                                   "residual stream where the family allows (mergemany, reference); the merge is "
                                   "saved folded")
    seed: int = field(default=0, metadata={"help": "seed of the matching"})
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})


def make_parser(subparsers):
    return add_command(subparsers, "merge", [MergeArguments, DataArguments], run,
                       help="merge several checkpoints into one modulo permutation, without training",
                       description="Align the members (MergeMany, cycle-consistent or to member 0), average them, optionally "
                       "repair their statistics, and save a checkpoint of their architecture with processor and model card.")


def run(args: MergeArguments, data_args: DataArguments) -> int:
    from ..merging import merge_checkpoints

    result = merge_checkpoints(args.members, args.output_dir, method=args.method, weights=args.weights, seed=args.seed,
                               repair=args.repair, data_args=data_args, overwrite=args.overwrite,
                               progress=not args.no_progress, symmetry=args.symmetry)
    info = result.info
    print(f"merged {len(info['members'])} members ({args.method}, {args.symmetry}, repair: {info['repair'] or 'none'}) in "
          f"{info['seconds']:.2f} s alignment, {info['iterations']} iteration(s); wrote {os.path.abspath(result.path)}")
    return 0
