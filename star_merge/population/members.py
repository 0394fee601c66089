"""Training a population: N anchors and M held-out models of one architecture, distinct seeds each."""

from __future__ import annotations

import logging
import os
import re
import shutil

from tqdm.auto import tqdm

from .._faults import fault_point
from ..modeling import build_model
from ..rundir import Member
from .manifest import first_difference, member_settings, read_json
from .training import TrainArguments, save_checkpoint, train_classifier
from ..errors import UserError

__all__ = ["train_population", "HELD_OUT_SEED_OFFSET", "member_is_complete"]

HELD_OUT_SEED_OFFSET = 1000
MEMBER_NAME = re.compile(r"(anchor|held-out)-\d{2,}")

logger = logging.getLogger(__name__)


def member_is_complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "model.safetensors", "training_info.json"))


def _plan(num_anchors: int, num_held_out: int, seed: int) -> list[tuple[str, str, int]]:
    """(folder name, role, seed) of every member, in the order they are assigned to processes."""
    if num_anchors < 1:
        raise UserError("the population needs at least one anchor (num_anchors >= 1)")
    if num_held_out < 0:
        raise UserError("num_held_out must be >= 0")
    plan = [(f"anchor-{i:02d}", "anchor", seed + i) for i in range(num_anchors)]
    return plan + [(f"held-out-{j:02d}", "held-out", seed + HELD_OUT_SEED_OFFSET + j) for j in range(num_held_out)]


def _reusable(path: str, wanted: dict, retrain_stale: bool) -> bool:
    """Whether the complete member at ``path`` was trained with ``wanted``'s settings (else retrain or refuse)."""
    if not member_is_complete(path):
        return False
    info = read_json(os.path.join(path, "training_info.json"))
    stored = info.get("population_settings") or {"seed": info.get("seed"), "train_args": info.get("train_args")}
    stale = first_difference(stored, {k: wanted[k] for k in stored} if "population_settings" not in info else wanted)
    if stale and not retrain_stale:
        raise UserError(f"{path} cannot be reused ({stale}); pass --overwrite_output_dir to retrain it, "
                        "or use another --population_dir")
    return not stale


def remove_extra_members(population_dir: str, keep: set[str]) -> list[str]:
    """Delete the members of an earlier, larger population (``anchor-XX`` / ``held-out-XX`` folders star-merge
    wrote, not in ``keep``) so that ``population_dir`` describes one population; returns their names."""
    removed = []
    if not os.path.isdir(population_dir):
        return removed
    for name in sorted(os.listdir(population_dir)):
        path = os.path.join(population_dir, name)
        ours = os.path.isfile(os.path.join(path, "training_info.json")) or member_is_complete(path)
        if name in keep or not MEMBER_NAME.fullmatch(name) or os.path.islink(path) or not ours:
            continue
        shutil.rmtree(path)
        removed.append(name)
    if removed:
        logger.warning("--overwrite_output_dir: removed %s of the earlier population from %s", ", ".join(removed),
                       population_dir)
    return removed


def train_population(
    model_config,
    dataset,
    population_dir: str,
    num_anchors: int,
    num_held_out: int,
    train_args: TrainArguments,
    seed: int = 0,
    device=None,
    progress: bool = True,
    data_settings: dict | None = None,
    retrain_stale: bool = False,
    *,
    task=None,
    collate_fn=None,
    processor=None,
    process_index: int = 0,
    num_processes: int = 1,
) -> list[Member]:
    """Train (or reuse) ``population_dir/anchor-XX`` (seeds seed+i) and ``held-out-XX`` (seeds seed+1000+j).

    Members already complete on disk are reused, so an interrupted run resumes member by member, but only when
    every setting that determines them (architecture and config, training recipe, ``data_settings``, seed; see
    population/manifest.py) is the one asked for: otherwise a UserError names the first difference, or, with
    ``retrain_stale``, the member is retrained and the members of an earlier, larger population are removed
    (by process 0). Each member is written atomically (temp folder + rename), with
    ``processor`` (the tokenizer / image processor its data was prepared with) beside it. ``task`` /
    ``collate_fn``: of the prepared data (raw text or images). Across processes, member k is trained by process
    ``k % num_processes`` alone; a member depends only on its seed, so the population is the one a single
    process trains. The caller waits for every process before using members another process trained.
    """
    members = []
    plan = _plan(num_anchors, num_held_out, seed)
    if retrain_stale and process_index == 0:  # --overwrite_output_dir: the folder holds this population only
        remove_extra_members(population_dir, {name for name, _, _ in plan})
    mine = [p for k, p in enumerate(plan) if k % num_processes == process_index]
    with tqdm(total=len(mine), desc="population" + (f" (process {process_index})" if num_processes > 1 else ""),
              disable=not progress) as bar:  # closed (its line ended) before an error is printed
        for k, (name, role, member_seed) in enumerate(plan):
            path = os.path.join(population_dir, name)
            if k % num_processes == process_index:
                wanted = member_settings(model_config, train_args, data_settings, member_seed)
                if not _reusable(path, wanted, retrain_stale):
                    model = build_model(model_config, member_seed)
                    model, metrics = train_classifier(model, dataset, train_args, member_seed, device=device,
                                                      progress=progress, desc=name, task=task, collate_fn=collate_fn)
                    save_checkpoint(model.to("cpu"), path, overwrite=os.path.exists(path), processor=processor,
                                    extra_json={**metrics, "train_args": train_args.__dict__, "population_settings": wanted})
                    fault_point("population")
                bar.update(1)
            members.append(Member(name=name, role=role, path=os.path.abspath(path), source=os.path.abspath(path)))
    return members
