"""The BMA's aligned anchors, checked against permutations found independently.

The anchors of this run directory are noisy copies of the star with their units shuffled by random
permutations. The saved permutations are found here by weight matching each anchor against the star
from scratch; the anchors the run directory (and the exported BMA) align with them must then lie within
the noise of the star, while the raw anchors are far from it.
"""

from __future__ import annotations

import os

import pytest
import torch

from star_merge import random_permutation, spec_for, weight_matching
from star_merge.bma import export_bma, load_bma
from star_merge.data import DataArguments
from star_merge.models import StarMLPConfig
from star_merge.io import atomic_write_json
from star_merge.rundir import MANIFEST_NAME, RunDirectory, save_permutations
from star_merge.spec import apply_permutation

from fixtures import build_model, save_checkpoint

NOISE = 1e-3


@pytest.fixture(scope="module")
def shuffled_run(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("shuffled-run"))
    config = StarMLPConfig(hidden_sizes=[24, 16])
    star = build_model(config, 0)
    save_checkpoint(star, os.path.join(path, "star"))
    spec = spec_for(star)
    base = star.state_dict()
    members, perms = [], {}
    g = torch.Generator().manual_seed(0)
    for k in range(3):
        name = f"anchor-{k:02d}"
        noisy = {n: v + NOISE * torch.randn(v.shape, generator=g) for n, v in base.items()}
        shuffled = apply_permutation(spec, random_permutation(spec, seed=10 + k), noisy)
        model = build_model(config, 0)
        model.load_state_dict(shuffled)
        save_checkpoint(model, os.path.join(path, "population", name))
        members.append({"name": name, "role": "anchor", "path": f"population/{name}", "source": "trained"})
        perms[name] = weight_matching(spec, base, shuffled, seed=k).perm  # found from scratch
    atomic_write_json(os.path.join(path, MANIFEST_NAME), {
        "config": {}, "data": DataArguments(dataset_name="mnist1d", num_samples=400).to_dict(),
        "model_type": config.model_type, "model_input_name": "input_values", "members": members,
    })
    save_permutations(os.path.join(path, "anchor_permutations.safetensors"), perms)
    return path, base


def _max_gap(sd, base):
    return max(float((sd[k] - base[k]).abs().max()) for k in base)


def test_aligned_anchors_are_the_star_up_to_the_noise(shuffled_run):
    path, base = shuffled_run
    run_ = RunDirectory(path)
    aligned = run_.aligned_anchor_state_dicts()
    assert list(aligned) == ["anchor-00", "anchor-01", "anchor-02"]
    for name, sd in aligned.items():
        raw = run_.load_member(name).state_dict()
        assert _max_gap(raw, base) > 100 * NOISE  # shuffled: far from the star
        assert _max_gap(sd, base) < 10 * NOISE, name


def test_exported_bma_stores_the_aligned_anchors(shuffled_run, tmp_path):
    path, base = shuffled_run
    bma = load_bma(export_bma(path, str(tmp_path / "bma"), num_samples=2, seed=0))
    for i in range(3):
        assert _max_gap(bma.anchors[i].tensors(), base) < 10 * NOISE
