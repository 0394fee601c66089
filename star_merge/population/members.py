"""Training a population: N anchors and M held-out models of one architecture, distinct seeds each."""

from __future__ import annotations

import json
import os

from tqdm.auto import tqdm

from ..modeling import build_model
from ..rundir import Member
from .training import TrainArguments, save_checkpoint, train_classifier

__all__ = ["train_population", "HELD_OUT_SEED_OFFSET", "member_is_complete"]

HELD_OUT_SEED_OFFSET = 1000


def member_is_complete(path: str) -> bool:
    return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "model.safetensors", "training_info.json"))


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
) -> list[Member]:
    """Train (or reuse) ``population_dir/anchor-XX`` (seeds seed+i) and ``held-out-XX`` (seeds seed+1000+j).

    Members already complete on disk with the same seed are skipped, so an interrupted run resumes.
    Each member is written atomically (temp folder + rename).
    """
    if num_anchors < 1:
        raise ValueError("the population needs at least one anchor (num_anchors >= 1)")
    if num_held_out < 0:
        raise ValueError("num_held_out must be >= 0")
    plan = [(f"anchor-{i:02d}", "anchor", seed + i) for i in range(num_anchors)]
    plan += [(f"held-out-{j:02d}", "held-out", seed + HELD_OUT_SEED_OFFSET + j) for j in range(num_held_out)]
    members = []
    for name, role, member_seed in tqdm(plan, desc="population", disable=not progress):
        path = os.path.join(population_dir, name)
        if member_is_complete(path):
            with open(os.path.join(path, "training_info.json")) as f:
                info = json.load(f)
            if info.get("seed") != member_seed:
                raise ValueError(
                    f"{path} was trained with seed {info.get('seed')}, this run expects {member_seed}; "
                    "use another --population_dir or delete it"
                )
        else:
            model = build_model(model_config, member_seed)
            model, metrics = train_classifier(model, dataset, train_args, member_seed, device=device,
                                              progress=False, desc=name)
            save_checkpoint(model.to("cpu"), path, extra_json={**metrics, "train_args": train_args.__dict__},
                            overwrite=os.path.exists(path))
        members.append(Member(name=name, role=role, path=os.path.abspath(path), source=os.path.abspath(path)))
    return members
