"""Align checkpoint B to checkpoint A modulo permutation and save B's aligned copy as a Hugging Face checkpoint.

The aligned copy computes the same function as B (up to float rounding), with its units reordered to
line up with A's, so that A and the copy can be interpolated or averaged. It is saved with
``save_pretrained`` (safetensors) together with B's tokenizer / preprocessor files, and loads like any
checkpoint of its architecture.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..adapters import spec_for
from ..argparsing import add_command, positional
from ..finite import check_finite
from ..modeling import load_checkpoint
from ..rundir import atomic_folder
from ..spec import SpecError, apply_permutation
from .activation_matching import activation_matching
from .weight_matching import MatchingResult, weight_matching

__all__ = ["ALIGNMENT_FILE", "AlignArguments", "align_checkpoints", "make_parser", "resolve_checkpoint", "run"]

#: Written next to the weights: what B was aligned to and how.
ALIGNMENT_FILE = "star_merge_alignment.json"

#: Files of a checkpoint that are not weights or model config but belong with the model (tokenizers,
#: image/audio processors, chat templates). ``config.json`` and generation config come from save_pretrained.
PREPROCESSING_PATTERNS = (
    "tokenizer*.json",
    "tokenizer.model",
    "vocab*",
    "merges.txt",
    "spiece.model",
    "sentencepiece*.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.*",
    "preprocessor_config.json",
    "processor_config.json",
    "image_processor*.json",
    "feature_extractor*.json",
    "video_preprocessor*.json",
)


def resolve_checkpoint(name_or_path: str) -> Path:
    """A local checkpoint folder for ``name_or_path``: the folder itself, or a Hub snapshot.

    Hub ids may pin a revision as ``owner/name@revision``; they are resolved (and pinned to a commit) by
    :func:`star_merge.hub.resolve_members`, which fetches safetensors weights only.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise NotADirectoryError(
            f"{name_or_path!r} is a file; give the checkpoint's folder (with config.json)"
        )
    from ..hub import PopulationError, resolve_members

    try:
        (member,) = resolve_members([name_or_path], progress=False)
    except PopulationError as e:
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a local folder nor a downloadable Hub model ({e})"
        ) from None
    return Path(member.path)


def _check_output_dir(output_dir: Path, overwrite: bool, *inputs: Path) -> None:
    for p in inputs:
        if output_dir.resolve() == p.resolve():
            raise ValueError(f"output_dir {str(output_dir)!r} is an input checkpoint; choose another folder")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not a folder")
        if any(output_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} is not empty; choose an empty or new folder, or pass overwrite=True"
            )


def _as_batches(dataset) -> Iterable[Mapping[str, torch.Tensor]]:
    """``dataset`` as an iterable of input batches: a DataLoader-like iterable, or a map-style dataset."""
    if isinstance(dataset, torch.utils.data.Dataset) or hasattr(dataset, "column_names"):
        return torch.utils.data.DataLoader(dataset, batch_size=256)
    return dataset


def _match(spec, model_a, model_b, method: str, dataset, seed: int) -> MatchingResult:
    if method == "weight":
        return weight_matching(spec, model_a.state_dict(), model_b.state_dict(), seed=seed)
    if method == "activation":
        sites = getattr(model_a, "activation_sites", None)
        try:
            sites = sites() if callable(sites) else None
        except NotImplementedError:
            sites = None
        if sites is None:
            raise ValueError(
                f"method='activation' needs a model that exposes activation_sites() (the built-in star models); "
                f"{type(model_a).__name__} does not. Use method='weight'"
            )
        if dataset is None:
            raise ValueError("method='activation' needs data: pass dataset= (batches of model inputs)")
        return activation_matching(spec, model_a, model_b, _as_batches(dataset), sites=sites, progress=False)
    raise ValueError(f"unknown alignment method {method!r}; use 'weight' or 'activation'")


def _copy_preprocessing_files(src: Path, dst: Path) -> list[str]:
    copied = []
    for pattern in PREPROCESSING_PATTERNS:
        for f in sorted(src.glob(pattern)):
            if f.is_file() and not (dst / f.name).exists():
                shutil.copy2(f, dst / f.name)
                copied.append(f.name)
    return copied


def align_checkpoints(
    a: str,
    b: str,
    output_dir: str,
    method: str = "weight",
    dataset=None,
    seed: int = 0,
    overwrite: bool = False,
) -> MatchingResult:
    """Align checkpoint ``b`` to checkpoint ``a`` and save the aligned copy of ``b`` in ``output_dir``.

    ``a`` and ``b`` are local folders or Hub ids (``owner/name[@revision]``) of the same architecture.
    ``method``: ``"weight"`` (weight matching, any model with an adapter) or ``"activation"`` (models
    with ``activation_sites()``; ``dataset`` then yields input batches). ``output_dir`` must be new or
    empty unless ``overwrite``; it is replaced in one rename once the copy is complete. Returns the
    matching result (``perm`` maps B to A's frame).
    """
    out = Path(output_dir).expanduser()
    path_a, path_b = resolve_checkpoint(a), resolve_checkpoint(b)
    _check_output_dir(out, overwrite, path_a, path_b)
    model_a, model_b = load_checkpoint(str(path_a)), load_checkpoint(str(path_b))
    check_finite(model_a.state_dict(), f"A ({a})")
    check_finite(model_b.state_dict(), f"B ({b})")  # NaN would be copied into the aligned output
    if type(model_a) is not type(model_b):
        raise SpecError(
            f"A is a {type(model_a).__name__} and B a {type(model_b).__name__}; align checkpoints of one architecture"
        )
    spec = spec_for(model_a)
    result = _match(spec, model_a, model_b, method, dataset, seed)
    aligned = apply_permutation(spec, result.perm, model_b.state_dict())
    model_b.load_state_dict(aligned)

    with atomic_folder(str(out)) as tmp_dir:
        tmp = Path(tmp_dir)
        model_b.save_pretrained(tmp)
        _copy_preprocessing_files(path_b, tmp)
        record = {
            "reference": a,
            "source": b,
            "method": method,
            "seed": seed,
            "objective": result.objective,
            "iterations": result.iterations,
        }
        (tmp / ALIGNMENT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return result


# ------------------------------------------------------------------------------------------------ CLI
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
                            dataset=dataset, seed=args.seed, overwrite=args.overwrite)
    print(f"aligned {args.checkpoint_b} to {args.checkpoint_a}: objective {res.objective:.6g} after "
          f"{res.iterations} sweep(s); wrote {os.path.abspath(args.output_dir)}")
    return 0
