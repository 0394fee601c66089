"""Merge checkpoints into one Hugging Face checkpoint: ``star-merge merge MEMBERS... --output_dir DIR``.

Members are Hub ids (``org/name[@rev]``), local folders, population files or run directories (a run's anchors);
they are merged by :func:`~star_merge.matching.merge.merge_models`, optionally repaired over data (BatchNorm reset
for BatchNorm models, REPAIR otherwise: :mod:`star_merge.evaluation.repair`), and saved with the members'
processor, ``star_merge_merge.json`` (method, members, weights, seconds) and a model card naming the method and
the members. ``star-merge push DIR --repo-id`` publishes it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .batchnorm import has_batchnorm, reset_bn_stats
from .errors import UserError
from .io import atomic_folder
from .matching.checkpoints import check_output_dir
from .matching.merge import check_merge_method, merge_models
from .modeling import check_same_architecture
from .processing import copy_processor_files
from .references import load_reference, resolve_members
from .rundir import MERGE_FILE, RunDirectory, RunPaths

__all__ = ["MERGE_FILE", "MergedCheckpoint", "merge_checkpoints", "expand_run_dirs", "repair_merged"]


@dataclass
class MergedCheckpoint:
    """What :func:`merge_checkpoints` wrote: the folder and the merge's description (``star_merge_merge.json``)."""

    path: str
    info: dict = field(default_factory=dict)


def expand_run_dirs(sources: Sequence[str], role: str = "anchor") -> list[str]:
    """``sources`` with every run directory replaced by its members of ``role`` (folders), in order."""
    out = []
    for s in sources:
        if os.path.isdir(s) and RunPaths(s).is_run():
            run = RunDirectory(s)
            chosen = run.anchors if role == "anchor" else run.held_out
            if not chosen:
                raise UserError(f"run directory {s} has no {role} members to merge")
            out += [m.path for m in chosen]
        else:
            out.append(s)
    return out


def repair_merged(model, members, weights, data_args, member_paths, progress=False) -> str:
    """Repair ``model`` in place over the train split: BatchNorm reset, or REPAIR; returns which."""
    from .data import make_dataloader
    from .evaluation.repair import REPAIR_BATCHES, repair_model
    from .population_data import load_population_data

    data = load_population_data(data_args, list(member_paths), evaluation=True,
                                model_input_name=getattr(model, "main_input_name", None))
    loader = make_dataloader(data.dataset["train"], 256, collate_fn=data.collate_fn)
    if has_batchnorm(model):
        reset_bn_stats(model, loader, REPAIR_BATCHES, task=data.task)
        return "batchnorm-reset"
    repair_model(model, members, weights, loader, max_batches=REPAIR_BATCHES, task=data.task)
    return "repair"


def merge_checkpoints(
    sources: Sequence[str],
    output_dir: str,
    method: str = "mergemany",
    weights: Sequence[float] | None = None,
    seed: int = 0,
    repair: bool = False,
    data_args=None,
    overwrite: bool = False,
    progress: bool = True,
    symmetry: str = "permutation",
) -> MergedCheckpoint:
    """Merge the checkpoints ``sources`` with ``method`` and save the merge in ``output_dir`` (module docstring).

    ``repair``: measure statistics over ``data_args`` (default MNIST-1D) and repair the merge. ``output_dir`` must
    be new or empty unless ``overwrite``; it appears in one rename once complete. ``symmetry="orthogonal"``: the
    members are folded and merged with orthogonal maps (:func:`~star_merge.matching.merge.merge_models`); the
    output is the folded merge, an ordinary checkpoint of the members' class (norm weights 1).
    """
    from .data import DataArguments
    from .matching.align import in_symmetry_form
    from .spec import apply_permutation

    check_merge_method(method, symmetry)  # before any download or load
    out = Path(output_dir).expanduser()
    expanded = expand_run_dirs(sources)
    members = resolve_members(expanded, progress=progress)
    check_output_dir(out, overwrite, *[Path(m.path) for m in members])
    models = [load_reference(m.path, name=m.display)[0] for m in members]
    for i, m in enumerate(models[1:], 1):
        check_same_architecture(models[0], m, (members[0].display, members[i].display))
    start = time.perf_counter()
    models = [in_symmetry_form(m, symmetry) for m in models]  # folded for orthogonal (the container too)
    merged_sd, record = merge_models(models, method=method, weights=weights, seed=seed, progress=progress,
                                     symmetry=symmetry)
    model = models[0]
    model.load_state_dict(merged_sd)
    repaired = None
    if repair:
        from .adapters import spec_for

        spec = spec_for(model, symmetry=symmetry)
        aligned = [apply_permutation(spec, p, m.state_dict()) for p, m in zip(record.perms, models)]
        repaired = repair_merged(model, aligned, record.weights, data_args or DataArguments(),
                                 [m.path for m in members], progress)
    info = {**record.to_dict(), "seed": seed, "repair": repaired, "seconds_total": time.perf_counter() - start,
            "members": [{"source": m.source, "repo_id": m.repo_id, "revision": m.revision} for m in members]}
    with atomic_folder(str(out)) as tmp_dir:
        tmp = Path(tmp_dir)
        model.save_pretrained(tmp)
        copy_processor_files(members[0].path, tmp)
        (tmp / MERGE_FILE).write_text(json.dumps(info, indent=2) + "\n")
        from .hub.merged_card import build_merged_card

        build_merged_card(info, json.loads((tmp / "config.json").read_text())).save(str(tmp / "README.md"))
    return MergedCheckpoint(str(out), info)
