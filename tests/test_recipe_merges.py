"""The recipe's --merge_methods: RUN/merged-<method>[-repair]/ written by ``merge_checkpoints`` after training and
scored in report.json beside the star (numbers checked against the written folder evaluated here directly)."""

from __future__ import annotations

import json
import os

import pytest
import torch

import star_merge  # noqa: F401  (registers the built-in models)
from star_merge.data import make_dataloader
from star_merge.errors import UserError
from star_merge.evaluation.engine import evaluate_loss_accuracy
from star_merge.matching.merge import merge_models
from star_merge.modeling import load_checkpoint
from star_merge.pipeline import RunArguments, run_starlight_pipeline, write_run_merges
from star_merge.rundir import MERGE_FILE, RunDirectory

from fixtures import tiny_arguments


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe-merges") / "run"
    config, data, pop, run_args = tiny_arguments(str(out), num_train_epochs=1, num_held_out=1, skip_bma=True,
                                                 eval_num_points=3, merge_methods="mergemany,reference")
    return out, run_starlight_pipeline(config, data, pop, run_args)


@pytest.mark.slow
def test_recipe_writes_and_scores_the_merges(run):
    out, report = run
    rd = RunDirectory(str(out))
    anchors = [load_checkpoint(m.path) for m in rd.anchors]
    dataset, _ = rd.load_data()
    test = make_dataloader(dataset["test"], 100)
    for method in ("mergemany", "reference"):
        name = f"merged-{method}"
        info = json.load(open(out / name / MERGE_FILE))
        assert info["method"] == method and info["repair"] is None and len(info["members"]) == len(anchors)
        written = load_checkpoint(str(out / name))
        expected, _ = merge_models(anchors, method=method, seed=0)  # the same merge, done here from the anchors
        for k, v in written.state_dict().items():
            torch.testing.assert_close(v, expected[k])
        loss, acc = evaluate_loss_accuracy(written, test)
        row = report["models"][name]
        assert row["role"] == "merged"
        assert row["test"]["nll"] == pytest.approx(loss, rel=1e-5) and row["test"]["accuracy"] == pytest.approx(acc)
    assert {r["a"] for r in report["barriers"]["merged_vs_held_out"]} == {"merged-mergemany", "merged-reference"}
    assert json.load(open(out / "report.json"))["models"]["merged-reference"]["test"] == report["models"][
        "merged-reference"]["test"]


@pytest.mark.slow
def test_recipe_merges_repair_and_refuse_to_overwrite(run, tmp_path):
    out, _ = run
    args = RunArguments(merge_methods="reference", merge_repair=True)
    assert args.merged_names() == ["merged-reference-repair"]
    (result,) = write_run_merges(str(out), args, progress=False)
    assert result.info["repair"] == "repair" and os.path.basename(result.path) == "merged-reference-repair"
    plain = load_checkpoint(str(out / "merged-reference")).state_dict()
    repaired = load_checkpoint(result.path).state_dict()
    assert not torch.allclose(repaired["layers.0.weight"], plain["layers.0.weight"])  # REPAIR folded in
    # an output_dir already holding the merge: refused before any work without --overwrite_output_dir
    (tmp_path / "merged-reference").mkdir()
    config, data, pop, run_args = tiny_arguments(str(tmp_path), merge_methods="reference")
    with pytest.raises(UserError, match="already holds merged-reference; pass --overwrite_output_dir"):
        run_starlight_pipeline(config, data, pop, run_args)
    assert sorted(os.listdir(tmp_path)) == ["merged-reference"]  # nothing written


def test_merge_options_are_checked():
    with pytest.raises(UserError, match="unknown --merge_methods 'zipit'"):
        RunArguments(merge_methods="mergemany,zipit")
    with pytest.raises(UserError, match="--merge_repair needs --merge_methods"):
        RunArguments(merge_repair=True)
    assert RunArguments(merge_methods=" cycle, mergemany,cycle").methods() == ["cycle", "mergemany"]
    assert RunArguments().merged_names() == []
