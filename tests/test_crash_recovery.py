"""kill -9 at every phase of a run, torn and corrupt checkpoints: recovery ends with the uninterrupted star.

The kills are real SIGKILLs of a recipe subprocess, placed with ``STAR_MERGE_KILL_AT`` (star_merge/_faults.py).
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from star_merge.data import load_task_dataset
from star_merge.population import train_population
from star_merge.rundir import load_checkpoint
from star_merge.starlight import StarlightConfig, StarlightTrainer

from fixtures import tiny_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "star.py")
# 160 training examples / 32 = 5 steps per epoch, 2 epochs; checkpoints at steps 3, 5 (epoch end), 6, 9, 10.
FLAGS = ["--num_samples", "200", "--num_anchors", "2", "--num_held_out", "1", "--population_epochs", "1",
         "--num_train_epochs", "2", "--model_config", '{"hidden_sizes": [8]}', "--bma_samples", "1",
         "--eval_num_points", "3", "--per_device_train_batch_size", "32", "--population_batch_size", "32",
         "--checkpointing_steps", "3", "--checkpoints_total_limit", "1"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("star_recipe_crash", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(out, *extra, kill=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("STAR_MERGE_KILL_AT", None)
    if kill:
        env["STAR_MERGE_KILL_AT"] = kill
    return subprocess.run([sys.executable, RECIPE, *FLAGS, "--output_dir", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600)


def star_of(run):
    return load_checkpoint(str(run / "star")).state_dict()


def leftovers(run):
    return [os.path.join(r, d) for r, dirs, _ in os.walk(run) for d in dirs if ".tmp-" in d or ".old-" in d]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = run_recipe(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_kill_9_at_every_phase_then_rerun_gives_the_uninterrupted_star(tmp_path, reference, capsys):
    run = tmp_path / "run"
    # 1. population: one member saved, the second never started
    proc = run_recipe(run, kill="population")
    assert proc.returncode == -signal.SIGKILL
    assert (run / "population" / "anchor-00" / "model.safetensors").is_file()
    assert not (run / "population" / "anchor-01").exists() and not (run / "starlight.json").exists()
    # 2. the same command: the population is reused; killed in Starlight before its first checkpoint
    proc = run_recipe(run, kill="starlight:2")
    assert proc.returncode == -signal.SIGKILL
    ckpts = run / "checkpoints"
    assert (run / "starlight.json").is_file()
    assert not ckpts.exists() or not any(d.startswith("checkpoint_") for d in os.listdir(ckpts))
    # the advice is not circular: rerunning says "resume", and resuming (no checkpoint yet) starts over
    capsys.readouterr()
    assert load_recipe().main(FLAGS + ["--output_dir", str(run)]) == 2
    assert "--resume_from_checkpoint latest" in capsys.readouterr().err
    # 3. resumed; killed while writing its second checkpoint (Accelerate's files written, Starlight's not)
    proc = run_recipe(run, "--resume_from_checkpoint", "latest", kill="checkpoint-save:2")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert "no usable checkpoint" in proc.stderr and "training starts from the beginning" in proc.stderr
    assert sorted(os.listdir(ckpts)) == [".checkpoint_1.tmp-save", "checkpoint_0"]
    # 4. resumed from checkpoint_0; killed while the BMA's weights sit in their temp folder
    proc = run_recipe(run, "--resume_from_checkpoint", "latest", kill="export")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert any(".bma.tmp-" in p for p in leftovers(run)) and (run / "star" / "model.safetensors").is_file()
    # 5. resumed (training already complete); killed during evaluation
    proc = run_recipe(run, "--resume_from_checkpoint", "latest", kill="evaluation")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    # 6. resumed to the end
    proc = run_recipe(run, "--resume_from_checkpoint", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref, got = star_of(reference), star_of(run)
    assert all(torch.equal(ref[k], got[k]) for k in ref), "recovered star differs from the uninterrupted one"
    assert leftovers(run) == []  # crash temp folders are cleaned up
    assert "summary" in json.loads((run / "report.json").read_text())
    assert len([d for d in os.listdir(run / "checkpoints") if d.startswith("checkpoint_")]) == 1  # total_limit 1


# ---------------------------------------------------------------------- checkpoints, in process
@pytest.fixture(scope="module")
def tiny_population(tmp_path_factory):
    config, data_args, pop, _ = tiny_arguments(None, num_anchors=2, num_held_out=0, population_epochs=1)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    members = train_population(model_config, dataset, str(tmp_path_factory.mktemp("pop")), 2, 0, pop.train_args(),
                               progress=False)
    anchors = [(m.name, load_checkpoint(m.path).state_dict()) for m in members]
    return model_config, anchors, dataset


def _train(out, tiny_population, **overrides):
    model_config, anchors, dataset = tiny_population
    config, *_ = tiny_arguments(str(out), num_train_epochs=2, checkpointing_steps=4, **overrides)
    return StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train()


def _crash_after_saves(monkeypatch, n):
    original = StarlightTrainer._save_state
    count = {"n": 0}

    def crash(self):
        original(self)
        count["n"] += 1
        if count["n"] == n:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(StarlightTrainer, "_save_state", crash)
    return original


@pytest.mark.parametrize("limit", [None, 1])
def test_torn_checkpoint_is_set_aside_and_resume_gives_the_same_star(tmp_path, tiny_population, monkeypatch, limit):
    full = _train(tmp_path / "full", tiny_population, checkpoints_total_limit=limit).model.state_dict()
    original = _crash_after_saves(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", tiny_population, checkpoints_total_limit=limit)
    monkeypatch.setattr(StarlightTrainer, "_save_state", original)
    ckpts = tmp_path / "run" / "checkpoints"
    newest = max(int(d.split("_")[1]) for d in os.listdir(ckpts))
    torn = ckpts / f"checkpoint_{newest + 1}"  # the repro: a torn next checkpoint with one file
    torn.mkdir()
    (torn / "model.safetensors").write_bytes(b"partial")
    before = set(os.listdir(ckpts))
    resumed = _train(tmp_path / "run", tiny_population, checkpoints_total_limit=limit,
                     resume_from_checkpoint="latest").model.state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    names = sorted(os.listdir(ckpts))
    assert f"torn-checkpoint_{newest + 1}" in names  # set aside, not deleted, not reused
    complete = [d for d in names if d.startswith("checkpoint_")]
    assert complete and all((ckpts / d / "starlight_state.json").is_file() for d in complete)
    if limit == 1:
        assert len(complete) == 1
    new = [d for d in complete if d not in before]
    assert new and all(int(d.split("_")[1]) > newest + 1 for d in new)  # numbering continues past the torn one


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, tiny_population, monkeypatch):
    full = _train(tmp_path / "full", tiny_population, checkpoints_total_limit=None).model.state_dict()
    original = _crash_after_saves(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "run", tiny_population, checkpoints_total_limit=None)
    monkeypatch.setattr(StarlightTrainer, "_save_state", original)
    ckpts = tmp_path / "run" / "checkpoints"
    newest = max((d for d in os.listdir(ckpts)), key=lambda d: int(d.split("_")[1]))
    theta = ckpts / newest / "starlight_theta.safetensors"
    theta.write_bytes(theta.read_bytes()[:50])  # truncated by a full disk
    resumed = _train(tmp_path / "run", tiny_population, checkpoints_total_limit=None,
                     resume_from_checkpoint="latest").model.state_dict()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert (ckpts / f"corrupt-{newest}").is_dir()


def test_an_explicit_unreadable_checkpoint_is_one_error(tmp_path, tiny_population):
    folder = tmp_path / "run" / "checkpoints" / "checkpoint_0"
    folder.mkdir(parents=True)
    (folder / "starlight_state.json").write_text("{}")
    with pytest.raises(ValueError, match="cannot be loaded"):
        _train(tmp_path / "run", tiny_population, resume_from_checkpoint=str(folder))


def test_checkpoints_total_limit_must_keep_one():
    with pytest.raises(ValueError, match="checkpoints_total_limit"):
        StarlightConfig(checkpoints_total_limit=0)
