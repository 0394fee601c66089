"""``star-merge merge``: the written checkpoint, its card and record, repair over data, refusals; ``--repair`` on
interpolation paths."""

import json
import os

import pytest
import torch

from star_merge import merge_models
from star_merge.cli import main
from star_merge.evaluation.connectivity import interpolation_curves
from star_merge.evaluation.engine import EvalData
from star_merge.modeling import build_model, load_checkpoint
from star_merge.models.mlp import StarMLPConfig


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("members")
    cfg = StarMLPConfig(input_size=40, hidden_sizes=[16, 12], num_labels=10)
    paths = []
    for s in range(3):
        path = str(root / f"m{s}")
        build_model(cfg, seed=s).save_pretrained(path)
        paths.append(path)
    return paths


def test_merge_command_writes_the_merged_checkpoint(checkpoints, tmp_path, capsys):
    out = str(tmp_path / "merged")
    assert main(["merge", *checkpoints, "--method", "reference", "--weights", "2", "1", "1", "--output_dir", out,
                 "--no_progress"]) == 0
    assert "merged 3 members (reference" in capsys.readouterr().out
    merged = load_checkpoint(out)
    models = [load_checkpoint(p) for p in checkpoints]
    expected, _ = merge_models(models, method="reference", weights=[2, 1, 1])
    for k, v in merged.state_dict().items():
        torch.testing.assert_close(v, expected[k])
    info = json.load(open(os.path.join(out, "star_merge_merge.json")))
    assert info["method"] == "reference" and info["weights"] == [0.5, 0.25, 0.25] and info["repair"] is None
    assert [m["source"] for m in info["members"]] == checkpoints
    card = open(os.path.join(out, "README.md")).read()
    assert "reference" in card and "`m0`" in card and "`m2`" in card
    assert str(tmp_path) not in card  # local folders by name only
    # never silently overwritten
    assert main(["merge", *checkpoints, "--output_dir", out, "--no_progress"]) == 2


def test_merge_command_repairs_over_data(checkpoints, tmp_path):
    out = str(tmp_path / "repaired")
    assert main(["merge", *checkpoints, "--method", "mergemany", "--repair", "--output_dir", out,
                 "--no_progress"]) == 0
    info = json.load(open(os.path.join(out, "star_merge_merge.json")))
    assert info["repair"] == "repair"
    plain, _ = merge_models([load_checkpoint(p) for p in checkpoints], method="mergemany")
    repaired = load_checkpoint(out).state_dict()
    assert not torch.allclose(repaired["layers.0.weight"], plain["layers.0.weight"])  # folded into the weights
    torch.testing.assert_close(repaired["classifier.weight"], plain["classifier.weight"])  # not a repair site


def test_merge_command_refuses_bad_input(checkpoints, tmp_path):
    assert main(["merge", checkpoints[0], "--output_dir", str(tmp_path / "x"), "--no_progress"]) == 2
    assert main(["merge", *checkpoints, "--weights", "1", "--output_dir", str(tmp_path / "y"), "--no_progress"]) == 2
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")  # no half-written output


def test_repaired_interpolation_keeps_the_ends_and_changes_the_middle(checkpoints):
    a, b = (load_checkpoint(p) for p in checkpoints[:2])
    g = torch.Generator().manual_seed(0)
    batches = [{"input_values": torch.randn(64, 40, generator=g), "labels": torch.randint(0, 10, (64,), generator=g)}]
    data = EvalData.from_loaders({"eval": batches}, batches)
    sd_a, sd_b = ({k: v.clone() for k, v in m.state_dict().items()} for m in (a, b))  # a is the container
    plain = interpolation_curves(a, sd_a, sd_b, data, 3)["eval"]
    fixed = interpolation_curves(a, sd_a, sd_b, data, 3, repair=True)["eval"]
    assert fixed.losses[0] == pytest.approx(plain.losses[0]) and fixed.losses[2] == pytest.approx(plain.losses[2])
    assert fixed.losses[1] != pytest.approx(plain.losses[1])


def test_push_plans_a_merged_checkpoint(checkpoints, tmp_path, capsys):
    from star_merge.hub.push import PushError, _plan, upload_plan

    out = str(tmp_path / "to_push")
    assert main(["merge", *checkpoints, "--method", "reference", "--output_dir", out, "--no_progress"]) == 0
    files = {f.path_in_repo: f for f in upload_plan(out, "me/merged")}
    assert set(files) == {"config.json", "model.safetensors", "star_merge_merge.json", "README.md"}
    card = _plan(out, "me/merged", None, "apache-2.0")[1]["me/merged"]
    assert "reference" in card and str(tmp_path) not in card
    assert main(["push", out, "--repo-id", "me/merged", "--dry_run"]) == 0
    assert "me/merged: 4 files" in capsys.readouterr().out
    with pytest.raises(PushError, match="no BMA"):
        upload_plan(out, "me/merged", bma_repo_id="me/bma")


def test_evaluate_run_scores_the_merges_next_to_the_star(tmp_path_factory, mnist1d):
    """RUN/merged-* (written by star-merge merge from the run's anchors) get a model row and held-out barriers."""
    import statistics

    from star_merge import evaluate_run
    from star_merge.data import make_dataloader
    from star_merge.evaluation.engine import evaluate_loss_accuracy
    from star_merge.io import atomic_write_json
    from star_merge.population.training import save_checkpoint
    from star_merge.rundir import MANIFEST_NAME

    root = tmp_path_factory.mktemp("run")
    cfg = StarMLPConfig(input_size=40, hidden_sizes=[16], num_labels=10)
    names = ["anchor-00", "anchor-01", "held-out-00", "held-out-01"]
    for i, n in enumerate(names):
        save_checkpoint(build_model(cfg, seed=i), str(root / "population" / n))
    save_checkpoint(build_model(cfg, seed=9), str(root / "star"))
    atomic_write_json(str(root / MANIFEST_NAME), {
        "config": {"note": "hand-written test manifest"}, "data": {"dataset_name": "mnist1d", "num_samples": 600},
        "model_type": "star-mlp",
        "model_input_name": "input_values",
        "members": [{"name": n, "role": "held-out" if n.startswith("held") else "anchor", "path": f"population/{n}",
                     "source": "trained", "repo_id": None, "revision": None} for n in names]})
    assert main(["merge", str(root), "--method", "reference", "--output_dir", str(root / "merged-reference"),
                 "--no_progress"]) == 0
    report = evaluate_run(str(root), num_points=3, progress=False)
    row = report["models"]["merged-reference"]
    assert row["role"] == "merged"
    dataset, _ = __import__("star_merge.rundir", fromlist=["RunDirectory"]).RunDirectory(str(root)).load_data()
    loss, acc = evaluate_loss_accuracy(load_checkpoint(str(root / "merged-reference")), make_dataloader(dataset["test"], 100))
    assert row["test"]["nll"] == pytest.approx(loss, rel=1e-5) and row["test"]["accuracy"] == pytest.approx(acc)
    rows = report["barriers"]["merged_vs_held_out"]
    assert [(r["a"], r["b"]) for r in rows] == [("merged-reference", "held-out-00"), ("merged-reference", "held-out-01")]
    mean = report["summary"]["merged_vs_held_out"]["merged-reference"]["test_loss_barrier"]["mean"]
    assert mean == pytest.approx(statistics.fmean(r["test"]["loss_barrier"] for r in rows))
    assert "Free merges vs the star" in (root / "report.md").read_text()
