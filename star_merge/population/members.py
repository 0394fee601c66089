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
) -> list[Member]:
    """Train (or reuse) ``population_dir/anchor-XX`` (seeds seed+i) and ``held-out-XX`` (seeds seed+1000+j).

    Members already complete on disk are reused, so an interrupted run resumes, but only when every setting
    that determines them (architecture and config, training recipe, ``data_settings``, seed; see
    population_manifest.py) is the one asked for: otherwise a ValueError names the first difference, or,
    with ``retrain_stale``, the member is retrained and the members of an earlier, larger population are removed.
    Each member is written atomically (temp folder + rename).
    """
    if num_anchors < 1:
        raise UserError("the population needs at least one anchor (num_anchors >= 1)")
    if num_held_out < 0:
        raise UserError("num_held_out must be >= 0")
    plan = [(f"anchor-{i:02d}", "anchor", seed + i) for i in range(num_anchors)]
    plan += [(f"held-out-{j:02d}", "held-out", seed + HELD_OUT_SEED_OFFSET + j) for j in range(num_held_out)]
    if retrain_stale:  # --overwrite_output_dir: the folder holds this population only
        remove_extra_members(population_dir, {name for name, _, _ in plan})
    members = []
    for name, role, member_seed in tqdm(plan, desc="population", disable=not progress):
        path = os.path.join(population_dir, name)
        wanted = member_settings(model_config, train_args, data_settings, member_seed)
        stale = None
        if member_is_complete(path):
            info = read_json(os.path.join(path, "training_info.json"))
            stored = info.get("population_settings") or {"seed": info.get("seed"), "train_args": info.get("train_args")}
            stale = first_difference(stored, {k: wanted[k] for k in stored} if "population_settings" not in info
                                     else wanted)
            if stale and not retrain_stale:
                raise UserError(f"{path} cannot be reused ({stale}); pass --overwrite_output_dir to retrain it, "
                                 "or use another --population_dir")
        if not member_is_complete(path) or stale:
            model = build_model(model_config, member_seed)
            model, metrics = train_classifier(model, dataset, train_args, member_seed, device=device,
                                              progress=False, desc=name)
            save_checkpoint(model.to("cpu"), path, overwrite=os.path.exists(path),
                            extra_json={**metrics, "train_args": train_args.__dict__, "population_settings": wanted})
            fault_point("population")
        members.append(Member(name=name, role=role, path=os.path.abspath(path), source=os.path.abspath(path)))
    return members
