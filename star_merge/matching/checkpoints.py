"""Align checkpoint B to checkpoint A modulo permutation and save B's aligned copy as a Hugging Face checkpoint.

The aligned copy computes the same function as B (up to float rounding), with its units reordered to
line up with A's, so that A and the copy can be interpolated or averaged. It is saved with
``save_pretrained`` (safetensors) together with B's tokenizer / preprocessor files, and loads like any
checkpoint of its architecture. ``star-merge align`` is :mod:`star_merge.commands.align`.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..groups import save_maps
from ..references import load_reference, resolve_reference
from ..io import atomic_folder
from ..modeling import check_same_architecture
from ..processing import copy_processor_files
from .align import AlignmentError, align, in_symmetry_form
from .weight_matching import MatchingResult

__all__ = ["ALIGNMENT_FILE", "align_checkpoints"]

#: Written next to the weights: what B was aligned to and how.
ALIGNMENT_FILE = "star_merge_alignment.json"
#: Written next to the weights: the group elements (permutations, orthogonal maps) that took B to A's frame.
MAPS_FILE = "star_merge_maps.safetensors"


def _check_output_dir(output_dir: Path, overwrite: bool, *inputs: Path) -> None:
    for p in inputs:
        if output_dir.resolve() == p.resolve():
            raise FileExistsError(f"output_dir {str(output_dir)!r} is an input checkpoint; choose another folder")
    if output_dir.exists():
        if not output_dir.is_dir():
            raise FileExistsError(f"output_dir {str(output_dir)!r} exists and is not a folder")
        if any(output_dir.iterdir()) and not overwrite:
            raise FileExistsError(
                f"output_dir {str(output_dir)!r} is not empty; choose an empty or new folder, or pass overwrite=True"
            )


def align_checkpoints(
    a: str,
    b: str,
    output_dir: str,
    method: str = "weight",
    dataset=None,
    seed: int = 0,
    overwrite: bool = False,
    symmetry: str = "permutation",
) -> MatchingResult:
    """Align checkpoint ``b`` to checkpoint ``a`` and save the aligned copy of ``b`` in ``output_dir``.

    ``a`` and ``b`` are local folders or Hub ids (``owner/name[@revision]``) of the same architecture.
    ``method``: ``"weight"`` (weight matching, any model with an adapter) or ``"activation"`` (models
    with ``activation_sites()``; ``dataset`` then yields input batches). ``output_dir`` must be new or
    empty unless ``overwrite``; it is replaced in one rename once the copy is complete. Returns the
    matching result (``perm`` maps B to A's frame; also saved as ``star_merge_maps.safetensors``).
    ``symmetry="orthogonal"``: A and B are folded (norm weights 1, a tied head untied) and B is aligned with
    orthogonal maps where the family allows them; the output is B folded, in the frame of A's folded form
    (interpolate it with ``fold_model(A)``), an ordinary checkpoint of B's class.
    """
    if method not in ("weight", "activation"):
        raise AlignmentError(f"unknown alignment method {method!r}; use 'weight' or 'activation'")
    out = Path(output_dir).expanduser()
    path_a, path_b = resolve_reference(a), resolve_reference(b)
    _check_output_dir(out, overwrite, Path(path_a), Path(path_b))
    model_a, _ = load_reference(path_a, name=f"A ({a})")
    model_b, _ = load_reference(path_b, name=f"B ({b})")  # NaN would be copied into the aligned output
    check_same_architecture(model_a, model_b)
    model_a, model_b = in_symmetry_form(model_a, symmetry), in_symmetry_form(model_b, symmetry)
    aligned, record = align(None, model_a, model_b, method, data=dataset, seed=seed, symmetry=symmetry)
    model_b.load_state_dict(aligned)

    with atomic_folder(str(out)) as tmp_dir:
        tmp = Path(tmp_dir)
        model_b.save_pretrained(tmp)
        copy_processor_files(path_b, tmp)
        entry = {"reference": a, "source": b, "method": method, "seed": seed, "symmetry": symmetry,
                 "objective": record.result.objective, "iterations": record.result.iterations}
        (tmp / ALIGNMENT_FILE).write_text(json.dumps(entry, indent=2) + "\n")
        save_maps(str(tmp / MAPS_FILE), record.result.perm)
    return record.result
