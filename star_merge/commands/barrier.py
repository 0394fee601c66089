"""``star-merge barrier A B``: the loss/accuracy barrier between two checkpoints, modulo permutation."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..argparsing import add_command, positional
from ..data import DataArguments
from ..evaluation.barrier import barrier_between
from ..io import atomic_write_json
from ..matching.align import ALIGN_METHODS
from .fields import presolve_field, symmetry_field

__all__ = ["BarrierArguments", "make_parser", "run"]


@dataclass
class BarrierArguments:
    """``star-merge barrier A B`` (the data flags are :class:`~star_merge.data.DataArguments`)."""

    checkpoint_a: str = positional("A", "checkpoint folder or Hub repo id (t=0)")
    checkpoint_b: str = positional("B", "checkpoint folder or Hub repo id (t=1)")
    align: str = field(default="weight", metadata={"choices": list(ALIGN_METHODS), "help": "how B is aligned to A"})
    repair: bool = field(default=False, metadata={"help": "REPAIR every interpolated point (models without BatchNorm)"})
    num_points: int = field(default=11, metadata={"help": "interpolation points, ends included"})
    seed: int = field(default=0, metadata={"help": "seed of weight matching"})
    presolve: str = presolve_field()
    symmetry: str = symmetry_field("permutation, or orthogonal maps where the family allows them (both models folded "
                                   "first)")
    splits: list[str] = field(default_factory=lambda: ["train", "test"],
                              metadata={"choices": ["train", "test"], "help": "splits to evaluate"})
    batch_size: int = field(default=512, metadata={"help": "evaluation batch size"})
    plot: str | None = field(default=None, metadata={"metavar": "PNG", "help": "write the interpolation curves to this PNG"})
    output_json: str | None = field(default=None, metadata={"metavar": "JSON",
                                                            "help": "write the curves and barriers to this JSON file"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing --plot / --output_json files"})
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})


def make_parser(subparsers):
    return add_command(subparsers, "barrier", [BarrierArguments, DataArguments], run,
                       help="loss/accuracy barrier between two checkpoints, modulo permutation",
                       description="Align B to A, interpolate, and print loss/accuracy barriers on each split.")


def _refuse_existing(paths: Sequence[str | None], overwrite: bool) -> None:
    for path in paths:
        if path and os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def run(args: BarrierArguments, data_args: DataArguments) -> int:
    """Handler of ``star-merge barrier``: prints one line per split; errors propagate as exceptions."""
    from ..evaluation.plots import plot_barrier_curves  # matplotlib: only when a command runs

    _refuse_existing([args.plot, args.output_json], args.overwrite)
    result = barrier_between(args.checkpoint_a, args.checkpoint_b, data_args, align=args.align,
                             num_points=args.num_points, seed=args.seed, splits=args.splits,
                             batch_size=args.batch_size, progress=not args.no_progress, symmetry=args.symmetry,
                             presolve=args.presolve, repair=args.repair)
    print(f"A = {args.checkpoint_a}\nB = {args.checkpoint_b} (aligned: {args.align}, symmetry: {args.symmetry}"
          f"{', REPAIR at every point' if result.repair else ''})")
    for split, curve in result.curves.items():
        print(
            f"{split:>5}: loss barrier {curve.loss_barrier:.4f}  accuracy barrier {100 * curve.accuracy_barrier:.2f} pts"
            f"  (loss A {curve.losses[0]:.4f}, B {curve.losses[-1]:.4f}; "
            f"accuracy A {100 * curve.accuracies[0]:.2f}%, B {100 * curve.accuracies[-1]:.2f}%)"
        )
    if args.output_json:
        atomic_write_json(args.output_json, result.to_dict())
    if args.plot:
        plot_barrier_curves(result, args.plot)
        print(f"plot written to {args.plot}")
    return 0
