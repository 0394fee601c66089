"""Starlight end to end on CPU: the recipe, exact resume, data parallelism, and every bad input."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import star_merge  # noqa: F401  (registers the built-in models with the Auto classes)
from star_merge.starlight import StarlightConfig, StarlightTrainer
from star_merge.population.training import build_model, save_checkpoint

from fixtures import tiny_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a tiny star-mlp run (the default demo config is the CNN's; these tests check the MLP recipe path)
TINY_FLAGS = ["--config", os.path.join(ROOT, "recipes", "configs", "mnist1d_mlp.yaml"),
              "--num_samples", "1000", "--num_anchors", "2", "--num_held_out", "1", "--population_epochs", "2",
              "--num_train_epochs", "2", "--model_config", '{"hidden_sizes": [16, 16]}', "--bma_samples", "2",
              "--per_device_train_batch_size", "64", "--population_batch_size", "64"]


def load_recipe():
    spec = importlib.util.spec_from_file_location("star_recipe", os.path.join(ROOT, "recipes", "star.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    code = load_recipe().main(TINY_FLAGS + ["--output_dir", str(out)])
    assert code == 0
    return out


def test_recipe_writes_the_run_directory(demo_run):
    for entry in ("starlight.json", "report.json", "report.md", "README.md", "anchor_permutations.safetensors",
                  "star/config.json", "star/model.safetensors", "bma/config.json", "population/anchor-01",
                  "population/held-out-00", "checkpoints"):
        assert (demo_run / entry).exists(), entry
    manifest = json.loads((demo_run / "starlight.json").read_text())
    assert manifest["status"] == "trained"
    assert manifest["config"]["num_train_epochs"] == 2 and manifest["data"]["num_samples"] == 1000
    assert [m["role"] for m in manifest["members"]] == ["anchor", "anchor", "held-out"]
    report = json.loads((demo_run / "report.json").read_text())
    assert "barriers" in report and "summary" in report


def test_star_is_an_ordinary_checkpoint(demo_run):
    star = AutoModelForSequenceClassification.from_pretrained(demo_run / "star").eval()
    out = star(input_values=torch.randn(3, 40))
    assert out.logits.shape == (3, 10)
    assert type(star).__name__ == "StarMLPForClassification"


def test_existing_output_dir_is_refused(demo_run, capsys):
    before = sorted(os.listdir(demo_run))
    assert load_recipe().main(TINY_FLAGS + ["--output_dir", str(demo_run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite_output_dir" in err[0]
    assert sorted(os.listdir(demo_run)) == before


def _final_star(trainer_result):
    return {k: v.clone() for k, v in trainer_result.model.state_dict().items()}


@pytest.mark.parametrize("model_type", ["star-mlp", "star-cnn1d"])
def test_resume_after_crash_gives_the_same_star(tmp_path, monkeypatch, model_type):
    from star_merge.data import load_task_dataset
    from star_merge.population import train_population

    config, data_args, pop, _ = tiny_arguments(str(tmp_path / "a"), model_type, num_train_epochs=3,
                                               checkpointing_steps=4, num_anchors=2, num_held_out=0,
                                               population_epochs=1, checkpoints_total_limit=None)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    members = train_population(model_config, dataset, str(tmp_path / "pop"), 2, 0, pop.train_args(), progress=False)
    from star_merge.rundir import load_checkpoint

    anchors = [(m.name, load_checkpoint(m.path).state_dict()) for m in members]
    full = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train()

    config.output_dir = str(tmp_path / "b")
    saves = {"n": 0}
    original = StarlightTrainer._save_state

    def crash_on_third_save(self):
        original(self)
        saves["n"] += 1
        if saves["n"] == 3:  # mid-epoch (step checkpoint) of epoch 1
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(StarlightTrainer, "_save_state", crash_on_third_save)
    with pytest.raises(KeyboardInterrupt):
        StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train()
    monkeypatch.setattr(StarlightTrainer, "_save_state", original)
    config.resume_from_checkpoint = "latest"
    resumed = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train()
    # Starlight's own state is JSON + safetensors: nothing Accelerate would unpickle with weights_only=False
    for folder in os.listdir(tmp_path / "b" / "checkpoints"):
        files = os.listdir(tmp_path / "b" / "checkpoints" / folder)
        assert "starlight_state.json" in files and not any(f.startswith("custom_checkpoint") for f in files)
    a, b = _final_star(full), _final_star(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed star differs from the uninterrupted one"
    assert all(torch.equal(full.perms[m][p], resumed.perms[m][p]) for m in full.perms for p in full.perms[m])


def test_same_seed_same_star_different_seed_different_star(tmp_path):
    from star_merge.data import load_task_dataset

    config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=1)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, i).state_dict()) for i in range(2)]
    s1 = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train().model.state_dict()
    s2 = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train().model.state_dict()
    config.seed = 1
    s3 = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train().model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["layers.0.weight"], s3["layers.0.weight"])


def test_two_processes_with_accelerate_launch(tmp_path):
    """`accelerate launch` with the multi-GPU example config: on CPU, two processes in one gloo group."""
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           os.path.join(ROOT, "recipes", "accelerate_configs", "multi_gpu.yaml"), "--main_process_port", "29531",
           os.path.join(ROOT, "recipes", "star.py"), *TINY_FLAGS, "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "starlight.json").read_text())
    assert manifest["num_processes"] == 2
    assert proc.stdout.count("run directory:") == 1  # the summary is printed by the main process only
    star = AutoModelForSequenceClassification.from_pretrained(out / "star")
    assert torch.isfinite(star(input_values=torch.randn(2, 40)).logits).all()


# ---------------------------------------------------------------------- bad input
def _run_expecting_error(capsys, argv, match):
    capsys.readouterr()  # drop what the test's own setup printed
    code = load_recipe().main(argv)
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(errors) == 1 and match in errors[0], err
    assert "Traceback" not in err


def _saved(tmp_path, name, config_kwargs=None, seed=0):
    from star_merge.models import StarMLPConfig

    model = build_model(StarMLPConfig(**(config_kwargs or {"hidden_sizes": [16, 16]})), seed)
    return save_checkpoint(model, str(tmp_path / name))


def test_bad_inputs_fail_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    a0, a1 = _saved(tmp_path, "a0"), _saved(tmp_path, "a1", seed=1)
    wide = _saved(tmp_path, "wide", {"hidden_sizes": [32, 16]})
    three = _saved(tmp_path, "three", {"hidden_sizes": [16, 16], "num_labels": 3})
    pickled = tmp_path / "pickled"
    shutil.copytree(a0, pickled)
    os.remove(pickled / "model.safetensors")
    torch.save({}, pickled / "pytorch_model.bin")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(a0, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not a safetensors file")
    base = ["--output_dir", str(out), "--num_samples", "200"]
    _run_expecting_error(capsys, base + ["--anchors", a0, wide], "shape")
    _run_expecting_error(capsys, base + ["--anchors", a0, str(pickled)], "safetensors")
    _run_expecting_error(capsys, base + ["--anchors", str(tmp_path / "missing")], "missing")
    _run_expecting_error(capsys, base + ["--anchors", a0, a1, three], "")
    _run_expecting_error(capsys, base + ["--num_anchors", "0"], "num_anchors")
    _run_expecting_error(capsys, base + ["--anchors", a0, str(corrupt)], "corrupt")
    config = tmp_path / "bad.yaml"
    config.write_text("num_anchors: 2\nlearning_rat: 0.1\n")
    _run_expecting_error(capsys, ["--config", str(config)] + base, "learning_rat")
    assert not out.exists()


def test_labels_that_do_not_fit_the_model(tmp_path, capsys):
    out = tmp_path / "out"
    narrow = _saved(tmp_path, "narrow", {"hidden_sizes": [8], "num_labels": 5})
    _run_expecting_error(capsys, ["--output_dir", str(out), "--num_samples", "200", "--anchors", narrow],
                         "num_labels=5")
    assert not out.exists()


def test_at_t_equal_one_the_star_gets_no_gradient():
    """The loss at (1-t)·θ + t·anchor depends on θ with factor (1-t): at t=1, θ must stay at its init."""
    from star_merge.data import load_task_dataset

    config, data_args, pop, _ = tiny_arguments(None, num_train_epochs=1, t_sampling="constant", t_constant=1.0,
                                               star_ce_weight=0.0)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(2)]
    trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"])
    init = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    star = trainer.train().model.state_dict()
    assert all(torch.equal(star[k], init[k]) for k in init)


def test_options_tensorboard_bf16_accumulation_sgd_beta(tmp_path, fresh_accelerate_state):
    from star_merge.data import load_task_dataset

    config, data_args, pop, _ = tiny_arguments(str(tmp_path / "opts"), "star-cnn1d", num_train_epochs=1,
                                               report_to="tensorboard", mixed_precision="bf16",
                                               gradient_accumulation_steps=2, optimizer="sgd", t_sampling="beta",
                                               anchor_device="accelerator", logging_steps=1, init="anchor:1")
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(2)]
    trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"])
    result = trainer.train()
    star = result.model.state_dict()
    assert all(torch.isfinite(v).all() for v in star.values() if v.is_floating_point())
    assert not torch.equal(star["convs.0.weight"], anchors[1][1]["convs.0.weight"])  # trained away from init
    events = [f for _, _, fs in os.walk(tmp_path / "opts" / "logs") for f in fs if "tfevents" in f]
    assert events, "tensorboard wrote no event file"
    # 1000 samples * 0.8 / 64 per batch = 13 micro-batches -> 7 optimizer steps with accumulation 2
    assert trainer.accelerator.gradient_accumulation_steps == 2


def test_latest_checkpoint_skips_an_incomplete_one(tmp_path):
    from star_merge.starlight import find_latest_checkpoint

    for n, complete in ((1, True), (2, True), (3, False)):  # 3: a crash hit between the two writes
        folder = tmp_path / f"checkpoint_{n}"
        folder.mkdir()
        if complete:
            (folder / "starlight_state.json").write_text("{}")
    assert find_latest_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint_2")
    assert find_latest_checkpoint(str(tmp_path / "none")) is None


RANK_SCRIPT = """
import sys, torch
sys.path.insert(0, {tests!r})
from fixtures import tiny_arguments
from star_merge.data import load_task_dataset
from star_merge.population.training import build_model
from star_merge.starlight import StarlightConfig, StarlightTrainer
config, data_args, pop, _ = tiny_arguments(None, "star-cnn1d", num_train_epochs=2, star_ce_weight=0.5,
                                           gradient_accumulation_steps=2)
dataset = load_task_dataset(data_args)
model_config = pop.build_config()
anchors = [(f"a{{i}}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]
trainer = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"])
star = trainer.train().model.state_dict()
rank = trainer.accelerator.process_index
torch.save({{k: v for k, v in star.items()}}, {out!r} + f"/rank{{rank}}-of-{{trainer.accelerator.num_processes}}.pt")
"""


def test_two_processes_train_one_star(tmp_path):
    """Data parallelism all-reduces θ's gradient: both processes end with the bit-identical star."""
    script = tmp_path / "train.py"
    script.write_text(RANK_SCRIPT.format(tests=os.path.join(ROOT, "tests"), out=str(tmp_path)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", "29533", str(script)]
    proc = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "rank0-of-2.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1-of-2.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_own_population_does_not_inherit_the_demo_silently(capsys):
    """``--anchors`` without --config: not the CNN demo's 60 epochs, lr 4e-3, star-cnn1d or output folder, and the
    recipe says which defaults it takes; the demo (no --anchors) keeps its values; explicit flags are silent."""
    import yaml

    recipe = load_recipe()
    demo = yaml.safe_load(open(recipe.DEFAULT_CONFIG))
    config, data_args, pop, run_args = recipe.parse_arguments(["--anchors", "./m0", "./m1"])
    note = capsys.readouterr().err
    assert config.num_train_epochs != demo["num_train_epochs"] and config.learning_rate != demo["learning_rate"]
    assert pop.model_type != demo["model_type"] and "mnist1d_cnn1d_demo" not in config.output_dir
    assert (config.num_train_epochs, config.learning_rate) == (20, 1e-3)  # StarlightConfig's defaults ...
    assert "--num_train_epochs and --learning_rate take the defaults (20 epochs, lr 1e-3)" in note  # ... said aloud
    assert (config.init, config.star_ce_weight, config.t_sampling) == ("anchor", 0.2, "beta")  # the method's
    recipe.parse_arguments(["--anchors", "./m0", "--num_train_epochs", "3", "--learning_rate", "0.01"])
    assert capsys.readouterr().err == ""
    config, _, pop, _ = recipe.parse_arguments([])
    assert (config.num_train_epochs, config.learning_rate, pop.model_type) == (
        demo["num_train_epochs"], demo["learning_rate"], demo["model_type"])


def test_trackers_log_the_starlight_metrics_per_epoch(tmp_path, fresh_accelerate_state):
    """report_to takes any tracker Accelerate supports (comma-separated); offline with tensorboard: every epoch's
    train loss (equal to the history) and alignment time are in the event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from star_merge.data import load_task_dataset
    from star_merge.errors import UserError

    assert StarlightConfig(report_to="tensorboard, wandb,trackio").trackers() == ["tensorboard", "wandb", "trackio"]
    assert StarlightConfig(report_to="none").trackers() is None
    with pytest.raises(UserError, match="unknown tracker 'tensorbord'.*tensorboard.*trackio"):
        StarlightConfig(report_to="tensorbord")
    config, data_args, pop, _ = tiny_arguments(str(tmp_path / "tb"), num_train_epochs=3, report_to="tensorboard",
                                               num_samples=400)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(2)]
    result = StarlightTrainer(model=model_config, args=config, anchors=anchors, train_dataset=dataset["train"]).train()
    dirs = sorted({root for root, _, files in os.walk(tmp_path / "tb" / "logs") if any("tfevents" in f for f in files)})
    accumulators = [EventAccumulator(d) for d in dirs]
    for acc in accumulators:
        acc.Reload()
    (events,) = [acc for acc in accumulators if "epoch/train_loss" in acc.Tags()["scalars"]]
    losses = [e.value for e in events.Scalars("epoch/train_loss")]
    assert losses == pytest.approx([h["train_loss"] for h in result.history], rel=1e-6)
    align = [e.value for e in events.Scalars("epoch/align_seconds")]
    assert len(align) == 3 and all(a >= 0 for a in align) and align[0] > 0  # epoch 0 aligns every anchor
