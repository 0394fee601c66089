"""FSDP2 mode of the Starlight trainer (star_merge/starlight/fsdp.py) on CPU with gloo.

The shard layout is checked against ``torch.chunk`` (what ``fully_shard`` keeps per parameter). End to end,
``accelerate launch --use_fsdp --fsdp_version 2`` with 2 processes x 50 samples per step must give the star that
one ordinary process computes with 100 samples per step and the same (anchor, t) draws, with the same anchor
permutations; every process exports the same unsharded star, equal to the gathered θ; a run killed mid-epoch
and resumed from its checkpoint ends bit-identical to the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

import star_merge  # noqa: F401  (registers the built-in models with the Auto classes)
from star_merge.data import load_task_dataset
from star_merge.errors import UserError
from star_merge.starlight import FlatLayout
from star_merge.starlight.fsdp import ShardLayout, fsdp_requested

from fixtures import build_model, tiny_arguments, train_star

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# odd widths: dim-0 chunks of unequal size (33 -> 17 + 16, 10 -> 5 + 5; with 4 processes 33 -> 9, 9, 9, 6)
SETTINGS = dict(model_config='{"hidden_sizes": [33, 31]}', num_train_epochs=2, star_ce_weight=0.5,
                checkpointing_steps=3)
SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from safetensors.torch import save_file
from fixtures import build_model, make_trainer, tiny_arguments
from star_merge.data import load_task_dataset

settings, out = json.loads(sys.argv[1]), sys.argv[2]
config, data_args, pop, _ = tiny_arguments(**settings)
dataset = load_task_dataset(data_args)
model_config = pop.build_config()
anchors = [(f"a{{i}}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]
trainer = make_trainer(config, model_config, anchors, dataset)
result = trainer.train()
acc = trainer.accelerator
theta = trainer.rows.gather(trainer.flat_star.theta)  # every process's shard of θ, assembled
star = {{k: v.contiguous() for k, v in result.model.state_dict().items()}}
save_file({{**star, "gathered_theta": theta.contiguous()}}, f"{{out}}/rank{{acc.process_index}}.safetensors")
if acc.is_main_process:
    trainer.save_model(f"{{out}}/star")
    perms = {{a: {{p: v.tolist() for p, v in d.items()}} for a, d in result.perms.items()}}
    with open(f"{{out}}/run.json", "w") as f:
        json.dump({{"fsdp": trainer.fsdp, "world": acc.num_processes, "perms": perms}}, f)
"""


def _anchors(model_config):
    return [(f"a{i}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]


def _launch(tmp_path, out, port, flags, env=None, **settings):
    """Run SCRIPT under ``accelerate launch`` with ``flags``; returns the finished process."""
    script = tmp_path / "fsdp_train.py"
    script.write_text(SCRIPT.format(tests=os.path.join(ROOT, "tests")))
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *flags, "--main_process_port", str(port),
           str(script), json.dumps({**SETTINGS, **settings}), str(out)]
    return subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})), capture_output=True,
                          text=True, timeout=600)


FLAGS = ["--use_fsdp", "--fsdp_version", "2", "--num_processes", "2",  # two FSDP groups: both hidden layers
         "--fsdp_auto_wrap_policy", "SIZE_BASED_WRAP", "--fsdp_min_num_params", "1000"]
CONFIG_FILE = ["--config_file", os.path.join(ROOT, "recipes", "accelerate_configs", "fsdp2.yaml")]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """One uninterrupted FSDP2 run, 2 processes x 50 samples per step (checkpoints every 3 steps)."""
    tmp = tmp_path_factory.mktemp("fsdp")
    proc = _launch(tmp, tmp / "out", 29651, FLAGS, output_dir=str(tmp / "run"), per_device_train_batch_size=50)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "out"


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_are_the_chunks_fully_shard_keeps(world):
    shapes = [(33, 40), (33,), (10, 33), (1, 3), (7, 2, 3)]
    layout = FlatLayout([(f"p{i}", torch.Size(s)) for i, s in enumerate(shapes)])
    full = torch.randn(layout.total, generator=torch.Generator().manual_seed(world))
    shards = [ShardLayout(layout, r, world) for r in range(world)]
    parts = [s.shard(full) for s in shards]
    for r, (s, part) in enumerate(zip(shards, parts)):
        assert part.numel() == s.total
        for name, view in s.views(part).items():  # the reference: torch.chunk along dim 0, empty where it ends
            chunks = layout.views(full)[name].chunk(world, dim=0)
            expected = chunks[r] if r < len(chunks) else view.new_empty((0, *view.shape[1:]))
            assert torch.equal(view, expected), (name, r)
    assert sum(s.total for s in shards) == layout.total
    assert torch.equal(shards[0].unshard(parts), full)
    state = layout.views(full)
    assert all(torch.equal(s.flatten(state), p) for s, p in zip(shards, parts))


def test_fsdp_is_read_from_the_launcher(monkeypatch):
    cpu = SimpleNamespace(distributed_type="MULTI_CPU")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not fsdp_requested(cpu)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_requested(cpu)
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(UserError, match="--fsdp_version 2"):
        fsdp_requested(cpu)


@pytest.mark.slow
def test_two_fsdp_processes_equal_one_process_with_the_same_draws(fsdp_run):
    from transformers import AutoModelForSequenceClassification

    run = json.loads((fsdp_run / "run.json").read_text())
    assert run["fsdp"] and run["world"] == 2
    ranks = [load_file(fsdp_run / f"rank{r}.safetensors") for r in range(2)]
    theta = ranks[0].pop("gathered_theta")
    assert torch.equal(theta, ranks[1].pop("gathered_theta"))
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])  # every process exports the same star
    # the same run in this process: one ordinary process, the global batch, the same per-step (n, t) draws
    config, data_args, pop, _ = tiny_arguments(None, **{**SETTINGS, "checkpointing_steps": None},
                                               per_device_train_batch_size=100)
    model_config = pop.build_config()
    dataset = load_task_dataset(data_args)
    one = train_star(config, model_config, _anchors(model_config), dataset)
    star = one.model.state_dict()
    layout = FlatLayout.of(one.model)
    assert torch.equal(layout.flatten(ranks[0]), theta)  # the export is the gathered θ
    for k in star:
        torch.testing.assert_close(ranks[0][k], star[k], rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")
    perms = {a: {p: v.tolist() for p, v in d.items()} for a, d in one.perms.items()}
    assert run["perms"] == perms
    assert any(v != sorted(v) for d in perms.values() for v in d.values())  # the alignment moved units
    loaded = AutoModelForSequenceClassification.from_pretrained(fsdp_run / "star").state_dict()
    assert all(torch.equal(loaded[k], ranks[0][k]) for k in star)
    config.per_device_train_batch_size = 50  # half the global batch: a different star (the check can fail)
    other = train_star(config, model_config, _anchors(model_config), dataset).model.state_dict()
    assert any((other[k] - star[k]).abs().max() > 1e-3 for k in star)


@pytest.mark.slow
def test_fsdp_resume_after_a_kill_is_exact(fsdp_run, tmp_path):
    """Killed (SIGKILL, both processes) after step 7 of 16, resumed from checkpoint_1 (step 6): the same star
    (launched with recipes/accelerate_configs/fsdp2.yaml: one FSDP group, the uninterrupted run had three)."""
    run_dir = tmp_path / "run"
    settings = dict(output_dir=str(run_dir), per_device_train_batch_size=50)
    killed = _launch(tmp_path, tmp_path / "killed", 29653, CONFIG_FILE, env={"STAR_MERGE_KILL_AT": "starlight:7"},
                     **settings)
    assert killed.returncode != 0
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["checkpoint_0", "checkpoint_1"]
    resumed = _launch(tmp_path, tmp_path / "resumed", 29655, CONFIG_FILE, resume_from_checkpoint="latest", **settings)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    expected = load_file(fsdp_run / "rank0.safetensors")
    for r in range(2):
        got = load_file(tmp_path / "resumed" / f"rank{r}.safetensors")
        assert all(torch.equal(got[k], expected[k]) for k in expected), r


@pytest.mark.parametrize("setting,match", [("align_overlap", "align_overlap"), ("batchnorm", "BatchNorm"),
                                           ("anchor_device", "anchor_device=cpu")])
def test_what_fsdp2_mode_does_not_support_is_one_line(setting, match):
    from star_merge.starlight.fsdp import check_fsdp_run

    model_type = "star-cnn1d" if setting == "batchnorm" else "star-mlp"
    overrides = {"align_overlap": {"align_overlap": True}, "anchor_device": {"anchor_device": "accelerator"}}
    config, _, pop, _ = tiny_arguments(None, model_type, **overrides.get(setting, {}))
    model = build_model(pop.build_config(), 0)
    check_fsdp_run(False, config, model)  # without FSDP2 each of these is allowed
    with pytest.raises(UserError, match=match):
        check_fsdp_run(True, config, model)
