"""``star-merge align A B --output_dir C``: B aligned to A, saved as a Hugging Face checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..argparsing import add_command, positional
from ..matching.checkpoints import align_checkpoints
from .fields import presolve_field, symmetry_field

__all__ = ["AlignArguments", "make_parser", "run"]


@dataclass
class AlignArguments:
    """``star-merge align A B --output_dir C``."""

    checkpoint_a: str = positional("A", "reference checkpoint: a local folder or Hub id (org/name[@rev])")
    checkpoint_b: str = positional("B", "checkpoint to align to A: a local folder or Hub id")
    output_dir: str = field(metadata={"aliases": ["--output"], "help": "folder for B aligned to A"})
    method: str = field(default="weight", metadata={"choices": ["weight", "activation"],
                                                    "help": "weight matching, or activation matching over data"})
    dataset_name: str = field(default="mnist1d", metadata={"help": "activation matching data (built-in or datasets name)"})
    seed: int = field(default=0, metadata={"help": "seed of the matching"})
    presolve: str = presolve_field()
    symmetry: str = symmetry_field("permutation, or orthogonal maps where the family allows them (folded form: norm "
                                   "weights 1)")
    overwrite: bool = field(default=False, metadata={"help": "replace a non-empty --output_dir"})


def make_parser(subparsers):
    return add_command(subparsers, "align", [AlignArguments], run,
                       help="align checkpoint B to A modulo permutation and save it as an HF checkpoint",
                       description="Weight matching (or activation matching over a dataset) of B to A; writes B's aligned copy "
                       "with B's config and tokenizer/preprocessor files. A and B: local folders or Hub ids (org/name[@rev]).")


def run(args: AlignArguments) -> int:
    dataset = None
    if args.method == "activation":
        from ..data import DataArguments, load_task_dataset, make_dataloader

        ds = load_task_dataset(DataArguments(dataset_name=args.dataset_name))
        dataset = make_dataloader(ds["train"], 256)
    res = align_checkpoints(args.checkpoint_a, args.checkpoint_b, args.output_dir, method=args.method,
                            dataset=dataset, seed=args.seed, overwrite=args.overwrite, symmetry=args.symmetry,
                            presolve=args.presolve)
    print(f"aligned {args.checkpoint_b} to {args.checkpoint_a}: objective {res.objective:.6g} after "
          f"{res.iterations} sweep(s); wrote {os.path.abspath(args.output_dir)}")
    return 0
