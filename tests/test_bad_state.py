"""Bad inputs and bad state (issue 16): each gives one line and exit 2, before any work, leaving nothing that
blocks the corrected rerun; stale populations, NaN members, a user's folder, a locked run, crash leftovers."""

import errno
import importlib.util
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

import star_merge as sm
from star_merge.cli import main as cli
from star_merge.models import StarMLPConfig
from star_merge.rundir import MANIFEST_NAME, save_permutations
from star_merge.population.training import build_model, save_checkpoint

from fixtures import tiny_arguments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe():
    spec = importlib.util.spec_from_file_location("star_recipe_bad", os.path.join(ROOT, "recipes", "star.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys, code, match, prefix="error:"):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars and warnings aside
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(prefix) and match in lines[0], err
    assert "Traceback" not in err


def recipe_error(capsys, argv, match):
    capsys.readouterr()
    one_line_error(capsys, load_recipe().main(argv), match)


def saved(tmp_path, name, seed=0, nan=False, **config):
    model = build_model(StarMLPConfig(**(config or {"hidden_sizes": [8]})), seed)
    if nan:
        with torch.no_grad():
            model.layers[0].weight[0, 0] = float("nan")
    return save_checkpoint(model, str(tmp_path / name))


# ------------------------------------------------------------------ item 6 / 8: validation before any work
@pytest.mark.parametrize("flags,match", [
    (["--eval_num_points", "1"], "eval_num_points"),
    (["--eval_pairs", "abc"], "eval_pairs"),
    (["--resume_from_checkpoint", "/nonexistent/checkpoint_3"], "not a Starlight checkpoint"),
    (["--resume_from_checkpoint", "latest"], "no run to resume"),
    (["--init", "anchor:x"], "anchor:K"),
    (["--checkpoints_total_limit", "0"], "checkpoints_total_limit"),
    (["--population_epochs", "0"], "population_epochs"),
    (["--population_optimizer", "adam"], "optimizer"),
])
def test_bad_flags_fail_before_any_work(tmp_path, capsys, flags, match):
    out = tmp_path / "out"
    recipe_error(capsys, ["--output_dir", str(out), "--num_samples", "200", *flags], match)
    assert not out.exists()


def test_bad_config_files_and_output_paths(tmp_path, capsys):
    out = tmp_path / "out"
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("num_anchors: [1\n")
    recipe_error(capsys, ["--config", str(bad_yaml), "--output_dir", str(out)], "not valid YAML")
    listed = tmp_path / "list.yaml"
    listed.write_text("model_config: [1, 2]\n")
    recipe_error(capsys, ["--config", str(listed), "--output_dir", str(out)], "model_config")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    recipe_error(capsys, ["--output_dir", str(a_file), "--num_samples", "200"], "is a file")
    assert not out.exists() and a_file.read_text() == "x"


def test_dataset_the_model_cannot_read(tmp_path, capsys):
    out = tmp_path / "out"
    recipe_error(capsys, ["--output_dir", str(out), "--dataset_name", "digits"], "input_values")
    assert not out.exists()


def test_a_config_naming_a_non_model_class(tmp_path, capsys):
    a0 = saved(tmp_path, "a0")
    cfg = json.loads(open(os.path.join(a0, "config.json")).read())
    cfg["architectures"] = ["AutoConfig"]
    open(os.path.join(a0, "config.json"), "w").write(json.dumps(cfg))
    recipe_error(capsys, ["--output_dir", str(tmp_path / "out"), "--num_samples", "200", "--anchors", a0],
                 "AutoConfig")


# ------------------------------------------------------------------ item 4: NaN members
def test_nan_anchor_is_named_before_training(tmp_path, capsys):
    out = tmp_path / "out"
    a0, bad = saved(tmp_path, "a0"), saved(tmp_path, "bad", seed=1, nan=True)
    recipe_error(capsys, ["--output_dir", str(out), "--num_samples", "200", "--anchors", a0, bad],
                 "anchor anchor-01")
    assert not out.exists()  # nothing left that would block the corrected rerun


def test_barrier_and_align_refuse_nan(tmp_path, capsys):
    a, bad = saved(tmp_path, "a"), saved(tmp_path, "bad", seed=1, nan=True)
    capsys.readouterr()
    one_line_error(capsys, cli(["barrier", a, bad, "--num_samples", "200", "--no_progress"]), "non-finite",
                   prefix="star-merge barrier: error:")
    out = tmp_path / "aligned"
    one_line_error(capsys, cli(["align", a, bad, "--output_dir", str(out)]), "non-finite",
                   prefix="star-merge align: error:")
    assert not out.exists()


def test_a_nan_loss_is_not_a_zero_barrier():
    import math

    from star_merge.evaluation.connectivity import loss_barrier

    assert math.isnan(loss_barrier([0.0, 0.5, 1.0], [1.0, float("nan"), 1.0]))
    assert loss_barrier([0.0, 0.5, 1.0], [1.0, 0.5, 1.0]) == 0.0


# ------------------------------------------------------------------ item 2: stale populations
def test_population_settings_are_compared_before_reuse(tmp_path):
    from star_merge.data import load_task_dataset
    from star_merge.population import train_population

    _, data_args, pop, _ = tiny_arguments(None, num_samples=200, population_epochs=1)
    dataset = load_task_dataset(data_args)
    model_config = pop.build_config()
    folder = str(tmp_path / "pop")
    train_population(model_config, dataset, folder, 1, 0, pop.train_args(), progress=False,
                     data_settings=data_args.to_dict())
    pop.population_epochs = 2
    with pytest.raises(ValueError, match="num_train_epochs: trained with 1, this run asks for 2"):
        train_population(model_config, dataset, folder, 1, 0, pop.train_args(), progress=False,
                         data_settings=data_args.to_dict())
    other_data = dict(data_args.to_dict(), num_samples=300)
    pop.population_epochs = 1
    with pytest.raises(ValueError, match="data.num_samples"):
        train_population(model_config, dataset, folder, 1, 0, pop.train_args(), progress=False,
                         data_settings=other_data)
    pop.population_epochs = 2  # --overwrite_output_dir: stale members are retrained, and say so
    (m,) = train_population(model_config, dataset, folder, 1, 0, pop.train_args(), progress=False,
                            data_settings=data_args.to_dict(), retrain_stale=True)
    info = json.loads(open(os.path.join(m.path, "training_info.json")).read())
    assert info["train_args"]["num_train_epochs"] == 2
    assert info["population_settings"]["train_args"]["num_train_epochs"] == 2


# ------------------------------------------------------------------ item 5: the user's own files
def test_overwrite_never_deletes_a_users_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "logs").mkdir(parents=True)
    (out / "README.md").write_text("my notes")
    (out / "logs" / "day1.txt").write_text("log")
    for extra in ([], ["--overwrite_output_dir"]):
        recipe_error(capsys, ["--output_dir", str(out), "--num_samples", "200", *extra], "not a star-merge run")
    assert (out / "README.md").read_text() == "my notes" and (out / "logs" / "day1.txt").is_file()
    assert sorted(os.listdir(out)) == ["README.md", "logs"]


# ------------------------------------------------------------------ item 7: one run per output directory
LOCKER = """
import sys, time
sys.path.insert(0, {path!r})
from star_merge import locking
with locking.lock_output_dir({out!r}):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_locked_output_dir_is_refused_and_a_dead_holders_lock_is_free(tmp_path, capsys):
    from star_merge.locking import lock_output_dir

    out = tmp_path / "run"
    code = LOCKER.format(path=ROOT, out=str(out))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe_error(capsys, ["--output_dir", str(out), "--num_samples", "200"], f"process {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)  # a crashed run: its lock must not block the next one
        holder.wait()
    assert os.path.exists(out / ".star-merge.lock")  # left behind by the killed holder
    with lock_output_dir(str(out)):
        pass
    assert not os.path.exists(out / ".star-merge.lock")


@pytest.mark.parametrize("command", ["evaluate", "export-bma"])
def test_evaluate_and_export_refuse_a_run_directory_in_use(tmp_path, capsys, command):
    """The commands that write into a run directory take its lock: refused (one line, exit 2, nothing
    written) while the run, or another such command, holds it; a lock left by a dead holder is free."""
    run = tmp_path / "run"
    run.mkdir()
    code = LOCKER.format(path=ROOT, out=str(run))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        capsys.readouterr()
        one_line_error(capsys, cli([command, str(run)]), f"run directory {run} is in use by process {holder.pid}",
                       prefix=f"star-merge {command}: error:")
        assert sorted(os.listdir(run)) == [".star-merge.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    capsys.readouterr()
    # the holder is dead: the command goes on to its own check of the folder (an empty one is no run)
    code = cli([command, str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "in use" not in err and "Traceback" not in err, err
    assert not os.path.exists(run / ".star-merge.lock")


# ------------------------------------------------------------------ item 8: disk full, corrupt files
def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch):
    import star_merge.matching.checkpoints as align_cmd

    a, b = saved(tmp_path, "a"), saved(tmp_path, "b", seed=1)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c"))

    monkeypatch.setattr(align_cmd, "atomic_folder", full)
    capsys.readouterr()
    one_line_error(capsys, cli(["align", a, b, "--output_dir", str(tmp_path / "c")]), "no space left on device",
                   prefix="star-merge align: error:")
    import star_merge.population.members as population

    monkeypatch.setattr(population, "save_checkpoint", full)  # the recipe: the first member's save fails
    out = tmp_path / "out"
    recipe_error(capsys, ["--output_dir", str(out), "--num_samples", "200", "--population_epochs", "1",
                          "--num_anchors", "1", "--num_held_out", "0", "--model_config", '{"hidden_sizes": [8]}'],
                 "no space left on device")
    assert not out.exists()  # nothing that blocks the rerun once space is freed
    from star_merge.errors import user_error_line

    rust = RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: \"No space\" })")
    assert user_error_line(rust).startswith("no space left on device")
    assert user_error_line(RuntimeError("a bug")) is None  # bugs keep their traceback


def _hand_made_run(tmp_path, perms=True):
    """A minimal run directory: one anchor, its permutation to the star, a star, a manifest."""
    from star_merge.data import DataArguments

    run = tmp_path / "run"
    star = build_model(StarMLPConfig(hidden_sizes=[8]), 0)
    save_checkpoint(star, str(run / "star"))
    anchor = saved(tmp_path, "anchor", seed=1)
    members = [{"name": "anchor-00", "role": "anchor", "path": anchor, "source": anchor}]
    (run / MANIFEST_NAME).write_text(json.dumps({
        "config": {}, "data": DataArguments(num_samples=200).to_dict(), "members": members,
        "model_input_name": "input_values"}))
    if perms:
        save_permutations(str(run / "anchor_permutations.safetensors"),
                          {"anchor-00": sm.random_permutation(sm.spec_for(star), 0)})
    return run


def test_truncated_permutations_and_corrupt_json_name_the_file(tmp_path, capsys):
    run = _hand_made_run(tmp_path)
    perms = run / "anchor_permutations.safetensors"
    perms.write_bytes(perms.read_bytes()[:40])
    capsys.readouterr()
    one_line_error(capsys, cli(["export-bma", str(run)]), "anchor_permutations.safetensors",
                   prefix="star-merge export-bma: error:")
    (run / MANIFEST_NAME).write_text('{"members": [')
    one_line_error(capsys, cli(["evaluate", str(run)]), MANIFEST_NAME, prefix="star-merge evaluate: error:")


# ------------------------------------------------------------------ item 10: crash leftovers, bma/README.md
def test_export_bma_overwrite_keeps_the_card(tmp_path, capsys):
    run = _hand_made_run(tmp_path)
    assert cli(["export-bma", str(run), "--samples", "2"]) == 0
    (run / "bma" / "README.md").write_text("my BMA card")
    assert cli(["export-bma", str(run), "--samples", "3", "--overwrite"]) == 0
    assert (run / "bma" / "README.md").read_text() == "my BMA card"
    assert json.loads((run / "bma" / "config.json").read_text())["num_samples"] == 3


def test_crash_leftovers_are_cleaned_or_restored(tmp_path):
    from star_merge.locking import recover_atomic_leftovers

    (tmp_path / ".star.tmp-abc12345").mkdir()  # a star being written when the crash hit
    (tmp_path / ".star.tmp-abc12345" / "model.safetensors").write_bytes(b"half")
    (tmp_path / ".bma.old-xyz" / "dir").mkdir(parents=True)  # crash between the two renames: bma/ is missing
    (tmp_path / ".bma.old-xyz" / "dir" / "config.json").write_text("{}")
    (tmp_path / "report").mkdir()
    (tmp_path / ".report.old-q1" / "dir").mkdir(parents=True)  # crash after the swap: report/ is the new one
    (tmp_path / ".report.json.k3j_x9a1").write_text("{")  # atomic_write_text's temp file
    (tmp_path / ".notes.txt").write_text("the user's hidden file")
    done = recover_atomic_leftovers(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".notes.txt", "bma", "report"] and len(done) == 4
    assert (tmp_path / "bma" / "config.json").read_text() == "{}"


def test_overwrite_removes_a_larger_earlier_populations_extra_members(tmp_path):
    """A 2-anchor + 1 held-out population overwritten by a 1-anchor one of another architecture: only the new
    member is left (was: anchor-01 and held-out-00 of the old architecture stayed beside it); a folder that is not
    a star-merge member is left alone."""
    from star_merge.data import load_task_dataset
    from star_merge.modeling import load_config
    from star_merge.population import train_population

    _, data_args, pop, _ = tiny_arguments(None, num_samples=200, population_epochs=1)
    dataset = load_task_dataset(data_args)
    folder = tmp_path / "pop"
    train_population(pop.build_config(), dataset, str(folder), 2, 1, pop.train_args(), progress=False,
                     data_settings=data_args.to_dict())
    assert sorted(os.listdir(folder)) == ["anchor-00", "anchor-01", "held-out-00"]
    (folder / "anchor-07").mkdir()  # not written by star-merge: never deleted
    pop.model_type, pop.model_config = "star-cnn1d", '{"channels": [4, 4]}'
    members = train_population(pop.build_config(), dataset, str(folder), 1, 0, pop.train_args(), progress=False,
                               data_settings=data_args.to_dict(), retrain_stale=True)
    assert [m.name for m in members] == ["anchor-00"]
    assert sorted(os.listdir(folder)) == ["anchor-00", "anchor-07"]
    assert load_config(str(folder / "anchor-00")).model_type == "star-cnn1d"
