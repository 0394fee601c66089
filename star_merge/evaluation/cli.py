"""``star-merge barrier A B`` and ``star-merge evaluate RUN_DIR``: arguments, parsers and handlers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..argparsing import add_command, positional
from ..data import DataArguments
from ..rundir import RunPaths
from .barrier import ALIGN_METHODS, barrier_between
from .render import format_value
from .verdict import headline, judge_star
from .report import GROUPS, SPLITS, evaluate_run

__all__ = ["BarrierArguments", "EvaluateArguments", "make_barrier_parser", "make_evaluate_parser", "run_barrier",
           "run_evaluate"]


# ---------------------------------------------------------------------------------------------- barrier
@dataclass
class BarrierArguments:
    """``star-merge barrier A B`` (the data flags are :class:`~star_merge.data.DataArguments`)."""

    checkpoint_a: str = positional("A", "checkpoint folder or Hub repo id (t=0)")
    checkpoint_b: str = positional("B", "checkpoint folder or Hub repo id (t=1)")
    align: str = field(default="weight", metadata={"choices": list(ALIGN_METHODS), "help": "how B is aligned to A"})
    num_points: int = field(default=11, metadata={"help": "interpolation points, ends included"})
    seed: int = field(default=0, metadata={"help": "seed of weight matching"})
    splits: list[str] = field(default_factory=lambda: ["train", "test"],
                              metadata={"choices": ["train", "test"], "help": "splits to evaluate"})
    batch_size: int = field(default=512, metadata={"help": "evaluation batch size"})
    plot: str | None = field(default=None, metadata={"metavar": "PNG", "help": "write the interpolation curves to this PNG"})
    output_json: str | None = field(default=None, metadata={"metavar": "JSON",
                                                            "help": "write the curves and barriers to this JSON file"})
    overwrite: bool = field(default=False, metadata={"help": "replace existing --plot / --output_json files"})
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})


def make_barrier_parser(subparsers):
    return add_command(subparsers, "barrier", [BarrierArguments, DataArguments], run_barrier,
                       help="loss/accuracy barrier between two checkpoints, modulo permutation",
                       description="Align B to A, interpolate, and print loss/accuracy barriers on each split.")


def _refuse_existing(paths: Sequence[str | None], overwrite: bool) -> None:
    for path in paths:
        if path and os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")


def run_barrier(args: BarrierArguments, data_args: DataArguments) -> int:
    """Handler of ``star-merge barrier``: prints one line per split; errors propagate as exceptions."""
    from ..rundir import atomic_write_json
    from .plots import plot_barrier_curves

    _refuse_existing([args.plot, args.output_json], args.overwrite)
    result = barrier_between(args.checkpoint_a, args.checkpoint_b, data_args, align=args.align,
                             num_points=args.num_points, seed=args.seed, splits=args.splits,
                             batch_size=args.batch_size, progress=not args.no_progress)
    print(f"A = {args.checkpoint_a}\nB = {args.checkpoint_b} (aligned: {args.align})")
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


# ---------------------------------------------------------------------------------------------- evaluate
@dataclass
class EvaluateArguments:
    """``star-merge evaluate RUN_DIR``."""

    run_dir: str = positional("RUN_DIR", "a run directory written by recipes/star.py")
    pairs: str = field(default="all", metadata={"help": "anchor ↔ held-out pairs: 'all' or a seeded sample of N"})
    seed: int = field(default=0, metadata={"help": "seed of pair sampling and weight matching"})
    metrics: list[str] = field(default_factory=list, metadata={"help": "extra `evaluate` metric names (needs `evaluate`)"})
    num_points: int = field(default=11, metadata={"help": "interpolation points, ends included"})
    batch_size: int = field(default=512, metadata={"help": "evaluation batch size"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing evaluation in RUN_DIR"})
    no_progress: bool = field(default=False, metadata={"help": "hide progress bars"})

    def __post_init__(self):
        if self.pairs != "all":
            try:
                n = int(self.pairs)
            except (TypeError, ValueError):
                n = 0
            if n < 1:
                raise ValueError(f"--pairs must be 'all' or a positive integer, got {self.pairs!r}")
            self.pairs = n


def make_evaluate_parser(subparsers):
    return add_command(subparsers, "evaluate", [EvaluateArguments], run_evaluate,
                       help="barriers and metrics of a Starlight run directory -> report.json, report.md, plots",
                       description="Evaluate RUN_DIR: star/anchor ↔ held-out barriers, per-model and ensemble metrics.")


def run_evaluate(args: EvaluateArguments) -> int:
    """Handler of ``star-merge evaluate``: prints the summary; errors propagate as exceptions. Holds the run
    directory's lock while it writes there (refused while a run, or another evaluate, holds it)."""
    from ..locking import lock_run_dir

    with lock_run_dir(args.run_dir):
        out = evaluate_run(args.run_dir, pairs=args.pairs, seed=args.seed, metrics=args.metrics,
                           overwrite=args.overwrite, num_points=args.num_points, batch_size=args.batch_size,
                           progress=not args.no_progress)
    s = out["summary"]
    for group, label in GROUPS.items():
        for split in SPLITS:
            st = s[group][f"{split}_loss_barrier"]
            if st["n"]:
                print(f"{label:>18} {split:>5} loss barrier: {st['mean']:.4f} ± {st['std']:.4f} (n={st['n']})")
    print(f"star / ordinary {headline(s)}")
    print(
        f"test accuracy: star {format_value(s['star_test_accuracy'], True)}%, "
        f"mean anchor {format_value(s['mean_anchor_test_accuracy'], True)}%"
    )
    print(judge_star(s).text)
    print(f"wrote {RunPaths(args.run_dir).report_json}, report.md and plots")
    return 0
