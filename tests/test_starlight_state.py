"""A run's state: resume across re-alignments and epoch boundaries, BatchNorm statistics, permutations.

800 training samples in batches of 64 are 13 micro-batches per epoch; with ``checkpointing_steps=4``
checkpoints are written after optimizer steps 4, 8, 12, 13 (end of epoch 0), 16, 20, 24, 26. A crash
before batch 8 of epoch 1 resumes from step 20, in the middle of epoch 1 (after the epoch-1 re-alignment
and the sampler's epoch-1 shuffle); a crash before batch 0 of epoch 1 resumes from the end of epoch 0
(the re-alignment of epoch 1 is still due). Either way the star and the permutations must be bit-identical
to an uninterrupted run.

The permutations a run returns must bring each original anchor into the star's frame: weight matching
the star against an anchor so permuted, from scratch, finds nothing left to improve (the identity).
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import star_merge  # noqa: F401  (registers the built-in models with the Auto classes)
from star_merge.data import load_task_dataset, make_dataloader
from star_merge.spec import apply_permutation

from fixtures import (SimulatedCrash, build_model, crash_before_batch, recompute_bn_statistics, tiny_arguments,
                      train_star)

MODEL_TYPES = ("star-mlp", "star-cnn1d")


def _setup(model_type):
    # the MLP also trains the star directly ("star + CE"); the BN CNN does not, so after the last step the
    # network holds an interpolated point, not θ (statistics computed there would be wrong)
    config, data_args, pop, _ = tiny_arguments(None, model_type, num_train_epochs=2, checkpointing_steps=4,
                                               checkpoints_total_limit=None,
                                               star_ce_weight=1.0 if model_type == "star-mlp" else 0.0)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]
    return config, model_config, anchors, dataset


@pytest.fixture(scope="module")
def uninterrupted():
    """model type -> (config, model_config, anchors, dataset, StarlightResult of an uninterrupted run)."""
    out = {}
    for model_type in MODEL_TYPES:
        config, model_config, anchors, dataset = _setup(model_type)
        out[model_type] = (config, model_config, anchors, dataset, train_star(config, model_config, anchors, dataset))
    return out


def _state(result):
    return {k: v.clone() for k, v in result.model.state_dict().items()}


@pytest.mark.parametrize("crash", [(1, 8), (1, 0)], ids=["mid-epoch-1", "epoch-boundary"])
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_resume_after_epoch_0_gives_the_same_star(uninterrupted, tmp_path, monkeypatch, model_type, crash):
    config, model_config, anchors, dataset, full = uninterrupted[model_type]
    config = dataclasses.replace(config, output_dir=str(tmp_path / "run"))
    with monkeypatch.context() as m:
        crash_before_batch(m, *crash)
        with pytest.raises(SimulatedCrash):
            train_star(config, model_config, anchors, dataset)
    assert os.listdir(tmp_path / "run" / "checkpoints")
    resumed = train_star(dataclasses.replace(config, resume_from_checkpoint="latest"), model_config, anchors, dataset)
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert full.perms.keys() == resumed.perms.keys()
    assert all(torch.equal(full.perms[n][p], resumed.perms[n][p]) for n in full.perms for p in full.perms[n])
    assert [h["epoch"] for h in resumed.history] == [0, 1]


def test_the_star_batchnorm_statistics_are_those_of_theta(uninterrupted):
    config, model_config, anchors, dataset, full = uninterrupted["star-cnn1d"]
    star = full.model
    names = [k for k in star.state_dict() if k.endswith(("running_mean", "running_var"))]
    assert names
    reference = build_model(model_config, 0)
    reference.load_state_dict(star.state_dict())  # θ (and buffers to be overwritten)
    loader = make_dataloader(dataset["train"], config.per_device_eval_batch_size)
    recompute_bn_statistics(reference, loader)
    ref = reference.state_dict()
    got = star.state_dict()
    for k in names:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{k}: {m}")
    # the statistics were recomputed from data: they are not the initial zeros/ones
    assert any(got[k].abs().max() > 1e-3 for k in names if k.endswith("running_mean"))


def test_returned_permutations_align_the_original_anchors_to_the_star(uninterrupted):
    from star_merge import spec_for, weight_matching

    config, model_config, anchors, dataset, full = uninterrupted["star-mlp"]
    star = {k: v.clone() for k, v in full.model.state_dict().items()}
    spec = spec_for(full.model)
    moved = 0
    for name, sd in anchors:
        perm = full.perms[name]
        spec.check_permutation(perm)
        moved += sum(int((v != torch.arange(v.numel())).sum()) for v in perm.values())
        aligned = apply_permutation(spec, perm, sd)
        # anchors whose frame is the star's: a fresh weight matching finds nothing to improve
        again = weight_matching(spec, star, aligned, seed=123, presolve=False)  # the trainer's matcher (matching_presolve=never)
        changed = {p: int((v != torch.arange(v.numel())).sum()) for p, v in again.perm.items()}
        assert not any(changed.values()), f"{name}: re-matching still moves units {changed}"
        # and the alignment is a real one: the aligned anchor is closer to the star than the original
        dist = lambda a: sum(float((a[k] - star[k]).pow(2).sum()) for k in spec.permuted_tensors)  # noqa: E731
        assert dist(aligned) < dist(sd)
    assert moved > 0
