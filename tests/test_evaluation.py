"""Barriers, run evaluation, reports and plots on tiny real star-mlp models trained on MNIST-1D."""

import copy
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Value
from PIL import Image
from torch import nn

from star_merge import apply_permutation, random_permutation, spec_for, weight_matching
from star_merge.data import DataArguments, load_task_dataset
from star_merge.evaluation import (
    ArchitectureMismatchError,
    EvalData,
    evaluate_run,
    interpolation_curves,
    measure_barrier,
    predict,
    select_pairs,
)
from star_merge.cli import main as cli_main
from star_merge.evaluation.metrics import MetricError
from star_merge.models import StarMLPConfig
from star_merge.io import atomic_write_json
from star_merge.rundir import MANIFEST_NAME, save_permutations
from star_merge.population.training import TrainArguments, build_model, save_checkpoint, train_classifier

DATA = DataArguments(num_samples=600)
HIDDEN = (24, 24)


@pytest.fixture(scope="module")
def dataset():
    return load_task_dataset(DATA, "input_values")


def _train(dataset, seed, hidden=HIDDEN):
    model = build_model(StarMLPConfig(hidden_sizes=hidden), seed)
    args = TrainArguments(num_train_epochs=4, learning_rate=3e-3, per_device_train_batch_size=64)
    return train_classifier(model, dataset, args, seed, progress=False)[0]


@pytest.fixture(scope="module")
def trained(dataset):
    return {seed: _train(dataset, seed) for seed in range(6)}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, trained):
    """A run directory per docs/run_directory.md: 3 anchors, 2 held-out, a star, stored permutations."""
    root = tmp_path_factory.mktemp("run")
    members = []
    for i, seed in enumerate((1, 2, 3)):
        members.append(("anchor", f"anchor-{i:02d}", trained[seed]))
    for i, seed in enumerate((4, 5)):
        members.append(("held-out", f"held-out-{i:02d}", trained[seed]))
    for role, name, model in members:
        save_checkpoint(model, str(root / "population" / name))
    star = trained[0]
    save_checkpoint(star, str(root / "star"))
    spec = spec_for(star)
    sd_star = star.state_dict()
    perms = {name: weight_matching(spec, sd_star, m.state_dict(), seed=0).perm for r, name, m in members if r == "anchor"}
    save_permutations(str(root / "anchor_permutations.safetensors"), perms)
    manifest = {
        "config": {"note": "hand-written test manifest"},
        "data": DATA.to_dict(),
        "model_type": "star-mlp",
        "model_input_name": "input_values",
        "members": [
            {"name": n, "role": r, "path": f"population/{n}", "source": "trained", "repo_id": None, "revision": None}
            for r, n, _ in members
        ],
    }
    atomic_write_json(str(root / MANIFEST_NAME), manifest)
    atomic_write_json(str(root / "report.json"), {"config": {"lr": 0.001}, "training": {"epochs": 4}})
    return root


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ------------------------------------------------------------------------------------------ barriers


def test_barrier_of_model_with_itself_is_zero(trained, dataset):
    model = trained[1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for other, align in ((copy.deepcopy(model), "weight"), (model, "none")):  # a copy, and the very same object
        result = measure_barrier(model, other, dataset, align=align, num_points=5, progress=False)
        for curve in result.curves.values():
            assert curve.loss_barrier == 0.0 and curve.accuracy_barrier == 0.0
            assert max(curve.losses) - min(curve.losses) < 1e-6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # A's weights restored


def test_barrier_of_permuted_copy_is_zero_after_matching(trained, dataset):
    model = trained[1]
    spec = spec_for(model)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(apply_permutation(spec, random_permutation(spec, seed=3), model.state_dict()))
    unaligned = measure_barrier(model, permuted, dataset, align="none", num_points=5, progress=False)
    assert unaligned.curves["train"].loss_barrier > 0.05  # the same function, yet a real barrier unaligned
    for align in ("weight", "activation"):
        aligned = measure_barrier(model, permuted, dataset, align=align, num_points=5, progress=False)
        assert aligned.alignment["method"] == align
        for curve in aligned.curves.values():
            assert curve.loss_barrier < 1e-6 and curve.accuracy_barrier == 0.0


class LinearSoftmax(nn.Module):
    """Multinomial logistic regression over ``input_values``: logits = W x + b (loss convex in W, b)."""

    def __init__(self, inputs=40, classes=10):
        super().__init__()
        self.linear = nn.Linear(inputs, classes)

    def forward(self, input_values, **kwargs):
        return SimpleNamespace(logits=self.linear(input_values.float()))


def _fit_linear(dataset, seed, steps=80):
    torch.manual_seed(seed)
    model = LinearSoftmax()
    x = torch.tensor(np.asarray(dataset["train"]["input_values"]), dtype=torch.float32)
    y = torch.tensor(np.asarray(dataset["train"]["labels"]))
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x).logits, y).backward()
        opt.step()
    return model


def test_convex_model_has_no_barrier_and_matches_closed_form(dataset):
    from accelerate import Accelerator

    data = EvalData(dataset, Accelerator(), batch_size=128)
    a, b = _fit_linear(dataset, 0), _fit_linear(dataset, 1)
    assert not torch.allclose(a.linear.weight, b.linear.weight)
    curves = interpolation_curves(LinearSoftmax(), a.state_dict(), b.state_dict(), data, 11, progress=False)
    for curve in curves.values():  # CE of logits affine in the weights is convex along any line
        assert curve.loss_barrier == 0.0
        chord = [(1 - t) * curve.losses[0] + t * curve.losses[-1] for t in curve.ts]
        assert all(l <= c + 1e-6 for l, c in zip(curve.losses[1:-1], chord[1:-1]))

    # A -> -A: logits (1 - 2t)·z, so L(t) has a closed form and t = 0.5 gives uniform predictions (log 10)
    neg = {k: -v for k, v in a.state_dict().items()}
    curve = interpolation_curves(LinearSoftmax(), a.state_dict(), neg, data, 11, progress=False)["test"]
    x = torch.tensor(np.asarray(dataset["test"]["input_values"]), dtype=torch.float64)
    y = torch.tensor(np.asarray(dataset["test"]["labels"]))
    with torch.no_grad():
        z = x @ a.linear.weight.double().T + a.linear.bias.double()
    expected = [float(nn.functional.cross_entropy((1 - 2 * t) * z, y)) for t in curve.ts]
    np.testing.assert_allclose(curve.losses, expected, rtol=1e-4)
    assert curve.losses[5] == pytest.approx(np.log(10), rel=1e-6)
    chord = [(1 - t) * expected[0] + t * expected[-1] for t in curve.ts]
    assert curve.loss_barrier == pytest.approx(max(e - c for e, c in zip(expected, chord)), rel=1e-4)


def test_barrier_cli_prints_plots_and_refuses_overwrite(trained, tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    save_checkpoint(trained[1], a)
    save_checkpoint(trained[2], b)
    png, js = str(tmp_path / "curve.png"), str(tmp_path / "curve.json")
    argv = ["barrier", a, b, "--num_samples", "600", "--num_points", "5", "--plot", png, "--output_json", js,
            "--no_progress"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "train: loss barrier" in out and "test: loss barrier" in out
    width, height = _png_size(png)
    assert 800 <= width <= 1600 and 300 <= height <= 800
    result = json.loads(Path(js).read_text())
    assert result["alignment"]["method"] == "weight" and len(result["test"]["losses"]) == 5
    printed = float(out.split("test: loss barrier ")[1].split()[0])
    assert printed == pytest.approx(result["test"]["loss_barrier"], abs=1e-4)
    before = os.path.getmtime(png)
    assert cli_main(argv) == 2  # existing output is never silently replaced
    assert "already exists" in capsys.readouterr().err and os.path.getmtime(png) == before


def test_barrier_bad_input_gives_one_line_errors(trained, dataset, tmp_path, capsys):
    small = _train(dataset, 7, hidden=(16, 24))
    with pytest.raises(ArchitectureMismatchError, match="different architectures.*layers.0.weight"):
        measure_barrier(trained[1], small, dataset, progress=False)

    a = str(tmp_path / "a")
    save_checkpoint(trained[1], a)
    user = tmp_path / "user_data"
    user.mkdir()
    for split in ("train", "test"):
        d = dataset[split].select(range(40))
        d = d.rename_columns({"input_values": "x", "labels": "label"})
        d.to_parquet(str(user / f"{split}.parquet"))
    cases = [
        (["--dataset", str(user)], "no input column 'input_values'"),
        (["--dataset", str(user), "--input_column", "x", "--label_column", "y"], "no label column 'y'"),
        (["--dataset", str(user), "--input_column", "x", "--max_eval_samples", "0"], "split 'test'.*is empty"),
    ]
    for extra, message in cases:
        capsys.readouterr()
        assert cli_main(["barrier", a, a, "--no_progress", *extra]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # progress bars of dataset loading come first
        assert last.startswith("star-merge barrier: error: ") and re.search(message, last), last
    # the same user dataset with the right columns works
    assert cli_main(["barrier", a, a, "--dataset", str(user), "--input_column", "x", "--num_points", "3",
                     "--no_progress"]) == 0
    capsys.readouterr()

    shifted = tmp_path / "shifted_labels"  # labels 5..14 for a 10-class head
    shifted.mkdir()
    for split in ("train", "test"):
        d = dataset[split].select(range(40)).cast_column("labels", Value("int64"))
        d = d.map(lambda row: {"labels": row["labels"] + 5})
        d.to_parquet(str(shifted / f"{split}.parquet"))
    capsys.readouterr()
    assert cli_main(["barrier", a, a, "--dataset", str(shifted), "--label_column", "labels", "--no_progress"]) == 2
    assert re.search(r"labels span \[\d+, 1[0-4]\] but the model has num_labels=10", capsys.readouterr().err)


# ------------------------------------------------------------------------------------------ run evaluation


def test_select_pairs_is_seeded_sample():
    anchors, held = ["a0", "a1", "a2"], ["h0", "h1"]
    assert len(select_pairs(anchors, held)) == 6
    two = select_pairs(anchors, held, 2, seed=5)
    assert len(two) == 2 and two == select_pairs(anchors, held, 2, seed=5)
    assert {tuple(select_pairs(anchors, held, 2, seed=s)) for s in range(20)} != {tuple(two)}
    with pytest.raises(ValueError, match="positive integer"):
        select_pairs(anchors, held, 0)


def test_evaluate_run_writes_reports_and_plots(run_dir, trained, dataset, monkeypatch):
    from accelerate import Accelerator

    def star_again(loader):  # an extra model through the callable hook: the star's own probabilities
        return predict(trained[0], loader, Accelerator(), progress=False).probs

    out = evaluate_run(run_dir, num_points=5, extra_models={"star copy": star_again}, progress=False)
    report = json.loads(Path(run_dir / "report.json").read_text())
    assert report["config"] == {"lr": 0.001} and report["training"] == {"epochs": 4}  # trainer keys kept
    for key in ("barriers", "models", "ensembles", "summary"):
        assert report[key] == json.loads(json.dumps(out[key]))

    b, s, m = report["barriers"], report["summary"], report["models"]
    assert [len(b[g]) for g in ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor")] == [2, 6, 3]
    for split in ("train", "test"):
        values = [r[split]["loss_barrier"] for r in b["anchor_vs_held_out"]]
        assert s["anchor_vs_held_out"][f"{split}_loss_barrier"]["mean"] == pytest.approx(np.mean(values))
        assert s["anchor_vs_held_out"][f"{split}_loss_barrier"]["std"] == pytest.approx(np.std(values, ddof=1))
        star_mean = s["star_vs_held_out"][f"{split}_loss_barrier"]["mean"]
        assert s["loss_barrier_ratio"][split] == pytest.approx(star_mean / np.mean(values))
    # curve endpoints are the models themselves: t=0 of star ↔ anchor is the star's own train loss
    for r in b["star_vs_anchor"]:
        assert r["train"]["losses"][0] == pytest.approx(m["star"]["train"]["loss"], rel=1e-5)
        assert r["test"]["accuracies"][-1] == pytest.approx(m[r["b"]]["test"]["accuracy"])  # permutation-invariant
    from star_merge.evaluation import evaluate_loss_accuracy
    from star_merge.data import make_dataloader

    loss, acc = evaluate_loss_accuracy(trained[0], make_dataloader(dataset["test"], 100))
    assert m["star"]["test"]["accuracy"] == pytest.approx(acc) and m["star"]["test"]["nll"] == pytest.approx(loss, rel=1e-5)
    assert s["mean_anchor_test_accuracy"] == pytest.approx(np.mean([m[f"anchor-0{i}"]["test"]["accuracy"] for i in range(3)]))
    ens = report["ensembles"]
    assert ens["deep_ensemble"]["members"] == ["anchor-00", "anchor-01", "anchor-02"]
    assert ens["star copy"]["test"]["nll"] == pytest.approx(m["star"]["test"]["nll"], rel=1e-5)
    assert "bma" not in ens  # no RUN_DIR/bma in this run

    md = (run_dir / "report.md").read_text()
    assert "| star ↔ held-out | 2 |" in md and "| deep_ensemble | ensemble |" in md
    # the verdict follows the numbers (recomputed here from the per-model metrics), the train-loss ratio leads
    anchor_nll = np.mean([m[f"anchor-0{i}"]["test"]["nll"] for i in range(3)])
    assert s["mean_anchor_test_nll"] == pytest.approx(anchor_nll)
    good = (m["star"]["test"]["accuracy"] >= s["mean_anchor_test_accuracy"] - 0.01
            and m["star"]["test"]["nll"] <= anchor_nll)
    assert ("star is a good solution" if good else "star is NOT a good solution") in md
    assert md.index("train-loss barrier ratio (paper's metric)") < md.index("test-loss barrier ratio")
    for name in ("interpolation_curves.png", "barrier_distribution.png", "reliability.png"):
        width, height = _png_size(run_dir / name)
        assert 500 <= width <= 1400 and 300 <= height <= 900
        assert os.path.getsize(run_dir / name) < 200_000

    with pytest.raises(FileExistsError, match="overwrite"):
        evaluate_run(run_dir, num_points=5, progress=False)
    monkeypatch.setitem(__import__("sys").modules, "evaluate", None)
    with pytest.raises(MetricError, match="not installed"):
        evaluate_run(run_dir, metrics=["f1"], overwrite=True, progress=False)

    again = evaluate_run(run_dir, pairs=2, seed=1, num_points=3, overwrite=True, progress=False)
    pairs = [(r["a"], r["b"]) for r in again["barriers"]["anchor_vs_held_out"]]
    assert pairs == select_pairs(["anchor-00", "anchor-01", "anchor-02"], ["held-out-00", "held-out-01"], 2, 1)
    assert json.loads(Path(run_dir / "report.json").read_text())["config"] == {"lr": 0.001}


def test_one_pair_has_no_spread_and_is_never_shown_as_plus_minus_zero():
    """Statistics over one pair: the sample std (n-1) is undefined, shown as "(one pair)" (was: "± 0.0000")."""
    from star_merge.evaluation.render import pm
    from star_merge.evaluation.report import summarize_barriers
    from star_merge.evaluation.summary import BarrierStats

    row = {split: {"loss_barrier": 0.25, "accuracy_barrier": 0.02} for split in ("train", "test")}
    one = summarize_barriers({"star_vs_held_out": [row], "anchor_vs_held_out": [row, dict(row, test={
        "loss_barrier": 0.75, "accuracy_barrier": 0.04})]})
    st = one["star_vs_held_out"]["test_loss_barrier"]
    assert st == {"mean": 0.25, "std": None, "n": 1}
    assert pm(BarrierStats.from_dict(st)) == "0.2500 (one pair)"
    two = BarrierStats.from_dict(one["anchor_vs_held_out"]["test_loss_barrier"])
    assert two.n == 2 and two.std == pytest.approx(np.std([0.25, 0.75], ddof=1))
    assert pm(two) == f"0.5000 ± {np.std([0.25, 0.75], ddof=1):.4f}"
