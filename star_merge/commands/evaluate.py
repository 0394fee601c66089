"""``star-merge evaluate RUN_DIR``: every barrier and metric of a run -> report.json, report.md, plots."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..argparsing import add_command, positional
from ..evaluation.render import GROUPS, SPLITS, format_value, pm
from ..evaluation.summary import BarrierStats
from ..evaluation.report import evaluate_run
from ..evaluation.verdict import headline, judge_star
from ..locking import lock_run_dir
from .fields import presolve_field, symmetry_field
from ..rundir import RunPaths
from ..errors import UserError

__all__ = ["EvaluateArguments", "make_parser", "run"]


@dataclass
class EvaluateArguments:
    """``star-merge evaluate RUN_DIR``."""

    run_dir: str = positional("RUN_DIR", "a run directory written by recipes/star.py")
    pairs: str = field(default="all", metadata={"help": "anchor ↔ held-out pairs: 'all' or a seeded sample of N"})
    seed: int = field(default=0, metadata={"help": "seed of pair sampling and weight matching"})
    presolve: str | None = presolve_field(None, "; default: the run's own (its matching_presolve)")
    metrics: list[str] = field(default_factory=list, metadata={"help": "extra `evaluate` metric names (needs `evaluate`)"})
    symmetry: str | None = symmetry_field("barriers modulo permutations, or orthogonal maps where the family allows "
                                          "them (folded forms); default: the run's", default=None)
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
                raise UserError(f"--pairs must be 'all' or a positive integer, got {self.pairs!r}")
            self.pairs = n


def make_parser(subparsers):
    return add_command(subparsers, "evaluate", [EvaluateArguments], run,
                       help="barriers and metrics of a Starlight run directory -> report.json, report.md, plots",
                       description="Evaluate RUN_DIR: star/anchor ↔ held-out barriers, per-model and ensemble metrics.")


def run(args: EvaluateArguments) -> int:
    """Handler of ``star-merge evaluate``: prints the summary; errors propagate as exceptions. Holds the run
    directory's lock while it writes there (refused while a run, or another evaluate, holds it)."""
    with lock_run_dir(args.run_dir):
        out = evaluate_run(args.run_dir, pairs=args.pairs, seed=args.seed, metrics=args.metrics,
                           overwrite=args.overwrite, num_points=args.num_points, batch_size=args.batch_size,
                           progress=not args.no_progress, symmetry=args.symmetry, presolve=args.presolve)
    s = out["summary"]
    for group, label in GROUPS.items():
        for split in SPLITS:
            st = s[group][f"{split}_loss_barrier"]
            if st["n"]:
                print(f"{label:>18} {split:>5} loss barrier: {pm(BarrierStats.from_dict(st))} (n={st['n']})")
    print(f"star / ordinary {headline(s)}")
    print(
        f"test accuracy: star {format_value(s['star_test_accuracy'], True)}%, "
        f"mean anchor {format_value(s['mean_anchor_test_accuracy'], True)}%"
    )
    print(judge_star(s).text)
    print(f"wrote {RunPaths(args.run_dir).report_json}, report.md and plots")
    return 0
