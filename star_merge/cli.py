"""The ``star-merge`` console entry point: adapters, align, barrier, evaluate, export-bma, push."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from . import __version__

# Errors a user can act on: printed as one line, exit status 2, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError, PermissionError)


def _add_adapters(subparsers) -> None:
    p = subparsers.add_parser("adapters", help="list the model types with a permutation adapter")
    p.set_defaults(func=_run_adapters)


def _run_adapters(args) -> int:
    from .adapters import supported_model_types
    from .adapters.heads import supported_heads

    types = supported_model_types()
    width = max(map(len, types), default=0)
    for t in types:  # one line per model type: the type, then the model classes (heads) its adapter covers
        print(f"{t:<{width}}  {' '.join(supported_heads(t)) or '(heads not declared)'}")
    return 0


def _add_align(subparsers) -> None:
    p = subparsers.add_parser(
        "align",
        help="align checkpoint B to A modulo permutation and save it as an HF checkpoint",
        description="Weight matching (or activation matching over a dataset) of B to A; writes B's aligned copy "
        "with B's config and tokenizer/preprocessor files. A and B: local folders or Hub ids (org/name[@rev]).",
    )
    p.add_argument("checkpoint_a", metavar="A")
    p.add_argument("checkpoint_b", metavar="B")
    p.add_argument("--output_dir", "--output", required=True, help="folder for B aligned to A")
    p.add_argument("--method", choices=("weight", "activation"), default="weight")
    p.add_argument("--dataset_name", default="mnist1d", help="activation matching data (built-in or datasets name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    p.set_defaults(func=_run_align)


def _run_align(args) -> int:
    from .align_cmd import align_checkpoints

    dataset = None
    if args.method == "activation":
        from .data import DataArguments, load_task_dataset, make_dataloader

        ds = load_task_dataset(DataArguments(dataset_name=args.dataset_name))
        dataset = make_dataloader(ds["train"], 256)
    res = align_checkpoints(args.checkpoint_a, args.checkpoint_b, args.output_dir, method=args.method,
                            dataset=dataset, seed=args.seed, overwrite=args.overwrite)
    print(f"aligned {args.checkpoint_b} to {args.checkpoint_a}: objective {res.objective:.6g} after "
          f"{res.iterations} sweep(s); wrote {os.path.abspath(args.output_dir)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .bma import add_parser as add_export_bma
    from .evaluation.barrier import add_parser as add_barrier
    from .evaluation.report import add_parser as add_evaluate
    from .hub import add_parser as add_push

    parser = argparse.ArgumentParser(
        prog="star-merge", description="Permutation-aware model merging with Starlight star models."
    )
    parser.add_argument("--version", action="version", version=f"star-merge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_adapters(sub)
    _add_align(sub)
    add_barrier(sub)
    add_evaluate(sub)
    add_export_bma(sub)
    add_push(sub)
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    from .hub import PushError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (*USER_ERRORS, PushError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"star-merge {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
