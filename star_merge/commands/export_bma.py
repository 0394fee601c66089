"""``star-merge export-bma RUN_DIR``: the star-domain BMA wrapper of a run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..argparsing import add_command, positional
from ..bma import export_bma
from ..locking import lock_run_dir

__all__ = ["ExportBMAArguments", "make_parser", "run"]


@dataclass
class ExportBMAArguments:
    """``star-merge export-bma RUN_DIR``."""

    run_dir: str = positional("RUN_DIR", "run directory written by recipes/star.py")
    output_dir: str | None = field(default=None, metadata={"help": "output folder (default RUN_DIR/bma)"})
    num_samples: int = field(default=16, metadata={"aliases": ["--samples"],
                                                   "help": "number S of star-domain points averaged (>= 1)"})
    seed: int = field(default=0, metadata={"help": "seed of the (anchor, t) draw"})
    t_distribution: str = field(default="uniform",
                                metadata={"help": "t ~ uniform | uniform(low,high) | beta(a,b) | constant(t)"})
    bn_max_batches: int | None = field(default=None, metadata={"help": "cap on BatchNorm reset batches"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing output folder"})


def make_parser(subparsers):
    """Add ``export-bma`` to a ``star-merge`` subparsers object; its handler is :func:`run`."""
    return add_command(subparsers, "export-bma", [ExportBMAArguments], run,
                       help="export the star-domain BMA wrapper of a run directory (RUN_DIR/bma)",
                       description="Write RUN_DIR/bma: the star, the aligned anchors and S sampled points (n, t), "
                       "loadable with AutoModelFor….from_pretrained (import star_merge.bma) or trust_remote_code=True.")


def run(args: ExportBMAArguments) -> int:
    """Handler of ``star-merge export-bma``; errors propagate (star_merge.cli prints them as one line). Holds
    the run directory's lock while it reads the run and writes the wrapper (by default into it)."""
    with lock_run_dir(args.run_dir):
        print(export_bma(**asdict(args)))
    return 0
