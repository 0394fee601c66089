"""The recipe logs its evaluation to the training's trackers: with ``report_to=tensorboard`` the event files hold,
beside the per-epoch training metrics, the report's headline numbers, each pair group's mean interpolation curve
(recomputed here by hand from report.json's per-pair losses) and the report's plots as images."""

from __future__ import annotations

import json
import os

import matplotlib.image
import pytest
from fixtures import tiny_arguments

from star_merge.evaluation.tracking import mean_curves, report_scalars
from star_merge.pipeline import run_starlight_pipeline


def _events(logs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged = {"scalars": {}, "images": {}}
    for root, _, files in os.walk(logs):
        if not any("tfevents" in f for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            merged["scalars"][tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
        for tag in acc.Tags()["images"]:
            merged["images"][tag] = acc.Images(tag)
    return merged


@pytest.mark.slow
def test_the_recipe_logs_its_evaluation_to_tensorboard(tmp_path, fresh_accelerate_state):
    out = tmp_path / "run"
    config, data, pop, run_args = tiny_arguments(str(out), num_train_epochs=2, num_held_out=1, num_anchors=2,
                                                 report_to="tensorboard", eval_num_points=5, bma_samples=2)
    run_starlight_pipeline(config, data, pop, run_args)
    report = json.loads((out / "report.json").read_text())
    events = _events(out / "logs")
    scalars = events["scalars"]

    # the training's own metrics are in the same logs
    assert len(scalars["epoch/train_loss"]) == 2
    last_step = max(step for step, _ in scalars["epoch/train_loss"])

    summary = report["summary"]
    (ratio,) = scalars["eval/loss_barrier_ratio/train"]
    assert ratio[0] == last_step and ratio[1] == pytest.approx(summary["loss_barrier_ratio"]["train"], rel=1e-6)
    for group in ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor"):
        barriers = [p["train"]["loss_barrier"] for p in report["barriers"][group]]
        (logged,) = scalars[f"eval/{group}/train_loss_barrier"]
        assert logged[1] == pytest.approx(sum(barriers) / len(barriers), rel=1e-6)
        # the mean curve by hand: at each of the 5 points, the mean over the group's pairs of the train loss
        pairs = report["barriers"][group]
        curve = scalars[f"eval_curve/{group}/train_loss"]
        assert [step for step, _ in curve] == [0, 25, 50, 75, 100]
        for i, (_, value) in enumerate(curve):
            assert value == pytest.approx(sum(p["train"]["losses"][i] for p in pairs) / len(pairs), rel=1e-6)
    (good,) = scalars["eval/star_is_good"]
    by_hand = (summary["star_test_accuracy"] >= summary["mean_anchor_test_accuracy"] - 0.01
               and summary["star_test_nll"] <= summary["mean_anchor_test_nll"])
    assert good[1] == float(by_hand)
    (bma_nll,) = scalars["eval/bma/test_nll"]
    assert bma_nll[1] == pytest.approx(report["ensembles"]["bma"]["test"]["nll"], rel=1e-6)

    for name in ("interpolation_curves", "barrier_distribution", "reliability"):
        (image,) = events["images"][f"eval_plots/{name}"]
        height, width = matplotlib.image.imread(out / f"{name}.png").shape[:2]
        assert (image.height, image.width) == (height, width)


def test_report_scalars_and_curves_skip_what_was_not_measured():
    report = {"summary": {"star_vs_held_out": {"train_loss_barrier": {"mean": 0.5, "std": None, "n": 1},
                                               "test_loss_barrier": {"mean": None, "std": None, "n": 0}},
                          "loss_barrier_ratio": {"train": 0.25, "test": None},
                          "star_test_accuracy": 0.9, "star_test_nll": 0.3,
                          "mean_anchor_test_accuracy": 0.95, "mean_anchor_test_nll": 0.2},
              "ensembles": {"bma": {"test": {"accuracy": 0.97, "nll": None}}},
              "barriers": {"star_vs_held_out": [{"train": {"ts": [0.0, 1.0], "losses": [1.0, 3.0]}},
                                                {"train": {"ts": [0.0, 1.0], "losses": [2.0, 5.0]}}]}}
    assert report_scalars(report) == {
        "eval/star_vs_held_out/train_loss_barrier": 0.5, "eval/loss_barrier_ratio/train": 0.25,
        "eval/star_test_accuracy": 0.9, "eval/star_test_nll": 0.3, "eval/mean_anchor_test_accuracy": 0.95,
        "eval/mean_anchor_test_nll": 0.2, "eval/star_is_good": 0.0,  # 90% is 5 pts below the anchors' 95%
        "eval/bma/test_accuracy": 0.97}
    assert mean_curves(report) == {"eval_curve/star_vs_held_out/train_loss": [(0.0, 1.5), (1.0, 4.0)]}
