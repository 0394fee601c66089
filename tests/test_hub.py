"""Hub integration, offline: populations resolved from a hand-built HF cache, model cards, publishing."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import ClassVar

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_cache import build_hf_cache, fake_sha, offline_hub, repo_cache_folder

from star_merge.hub import (
    PlannedFile,
    PopulationError,
    PushError,
    push_run,
    resolve_members,
    upload_plan,
)
from star_merge.hub.cards import END_MARKER
from star_merge.hub.model_card import write_model_card
from star_merge.models import StarCNN1dConfig, StarMLPConfig
from star_merge.rundir import load_checkpoint
from star_merge.population.training import build_model, save_checkpoint

MLP = {"input_size": 8, "hidden_sizes": [6], "num_labels": 10}


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Saved tiny checkpoints: three star-mlp seeds, a wider star-mlp, a star-cnn1d, a pickle-only folder."""
    root = tmp_path_factory.mktemp("ckpts")
    out = {}
    for seed in range(3):
        out[f"mlp{seed}"] = save_checkpoint(build_model(StarMLPConfig(**MLP), seed), str(root / f"mlp{seed}"))
    out["wide"] = save_checkpoint(build_model(StarMLPConfig(input_size=8, hidden_sizes=[12]), 0), str(root / "wide"))
    out["cnn"] = save_checkpoint(
        build_model(StarCNN1dConfig(input_size=8, channels=[2], kernel_size=3, num_labels=10), 0), str(root / "cnn")
    )
    pickle_only = root / "pickle"
    pickle_only.mkdir()
    (pickle_only / "config.json").write_text((root / "mlp0" / "config.json").read_text())
    torch.save(build_model(StarMLPConfig(**MLP), 0).state_dict(), pickle_only / "pytorch_model.bin")
    out["pickle"] = str(pickle_only)
    return out


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline HF cache in a temp HF_HOME; weight downloads are recorded."""
    cache = offline_hub(monkeypatch, str(tmp_path / "hf_home"))
    import huggingface_hub

    calls = []
    real = huggingface_hub.snapshot_download

    def recording_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("revision"), kwargs.get("allow_patterns")))
        return real(repo_id, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", recording_snapshot_download)
    return argparse.Namespace(cache=cache, downloads=calls)


def _same_weights(path_a: str, path_b: str) -> bool:
    a, b = load_checkpoint(path_a).state_dict(), load_checkpoint(path_b).state_dict()
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ resolving
def test_population_of_hub_ids_resolves_offline_and_pins_commits(hub, checkpoints, tmp_path):
    sha_a = build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    sha_b_main = build_hf_cache(hub.cache, "org/mlp-b", checkpoints["mlp2"])
    sha_b_v1 = build_hf_cache(hub.cache, "org/mlp-b", checkpoints["mlp1"], revision_name="v1")
    sha_c = build_hf_cache(hub.cache, "org/mlp-c", checkpoints["mlp2"], revision_name=None, sha=fake_sha("c"))

    members = resolve_members(
        ["org/mlp-a", "org/mlp-b@v1", f"org/mlp-c@{sha_c}", checkpoints["mlp2"]], progress=False, max_workers=2
    )

    assert members.model_type == "star-mlp"
    assert [m.repo_id for m in members] == ["org/mlp-a", "org/mlp-b", "org/mlp-c", None]
    assert [m.revision for m in members] == [sha_a, sha_b_v1, sha_c, None]
    assert sha_b_v1 != sha_b_main
    assert [m.source for m in members] == ["org/mlp-a", "org/mlp-b@v1", f"org/mlp-c@{sha_c}", checkpoints["mlp2"]]
    for m, sha in zip(members[:3], (sha_a, sha_b_v1, sha_c)):
        assert m.path == os.path.join(repo_cache_folder(hub.cache, m.repo_id), "snapshots", sha)
        assert m.role == "anchor"
    assert members[3].path == checkpoints["mlp2"]
    # each member holds the weights of the revision asked for, not the branch head
    for m, ckpt in zip(members, ("mlp0", "mlp1", "mlp2", "mlp2")):
        assert _same_weights(m.path, checkpoints[ckpt])
    # downloads were pinned to the sha and asked for safetensors + json, never pickles
    assert sorted(hub.downloads) == sorted(
        (repo, sha, hub.downloads[0][2]) for repo, sha in (("org/mlp-a", sha_a), ("org/mlp-b", sha_b_v1), ("org/mlp-c", sha_c))
    )
    patterns = hub.downloads[0][2]
    assert "*.safetensors" in patterns and not any(p.endswith((".bin", ".py")) for p in patterns)
    # the hand-built cache also serves plain transformers, by branch name and by sha
    from transformers import AutoModel

    by_branch = AutoModel.from_pretrained("org/mlp-b", revision="v1").state_dict()
    by_sha = AutoModel.from_pretrained("org/mlp-b", revision=sha_b_main).state_dict()
    assert all(torch.equal(by_branch[k], load_checkpoint(checkpoints["mlp1"]).state_dict()[k]) for k in by_branch)
    assert all(torch.equal(by_sha[k], load_checkpoint(checkpoints["mlp2"]).state_dict()[k]) for k in by_sha)


def test_population_files_yaml_mapping_and_plain_lines(hub, checkpoints, tmp_path):
    sha_a = build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    sha_b = build_hf_cache(hub.cache, "org/mlp-b", checkpoints["mlp1"], revision_name="release")
    local = tmp_path / "pop" / "local-anchor"
    local.parent.mkdir()
    os.symlink(checkpoints["mlp2"], local)
    yaml_file = tmp_path / "pop" / "population.yaml"
    yaml_file.write_text("anchors:\n  - org/mlp-a\n  - local-anchor\nheld_out:\n  - org/mlp-b@release\n")
    txt_file = tmp_path / "pop" / "held_out.txt"
    txt_file.write_text("# held-out models\norg/mlp-b@release\n\norg/mlp-a  # the default branch\n")

    anchors = resolve_members(str(yaml_file), progress=False)
    held_out = resolve_members(str(yaml_file), role="held-out", progress=False, like=anchors)
    from_lines = resolve_members(str(txt_file), role="held-out", progress=False)

    assert [(m.repo_id, m.revision) for m in anchors] == [("org/mlp-a", sha_a), (None, None)]
    assert anchors[1].path == str(local)
    assert [(m.repo_id, m.revision, m.role) for m in held_out] == [("org/mlp-b", sha_b, "held-out")]
    assert [(m.repo_id, m.revision) for m in from_lines] == [("org/mlp-b", sha_b), ("org/mlp-a", sha_a)]


def _one_line_error(excinfo, *needles):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def test_mixed_model_types_fail_before_any_weights_are_downloaded(hub, checkpoints):
    build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    build_hf_cache(hub.cache, "org/cnn", checkpoints["cnn"])
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a", "org/cnn"], progress=False)
    _one_line_error(excinfo, "org/mlp-a", "'star-mlp'", "org/cnn", "'star-cnn1d'")
    assert hub.downloads == []


def test_shape_mismatch_fails_before_any_weights_are_downloaded(hub, checkpoints):
    build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    build_hf_cache(hub.cache, "org/wide", checkpoints["wide"])
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a", "org/wide"], progress=False)
    _one_line_error(excinfo, "org/wide", "org/mlp-a", "(12, 8) vs (6, 8)")
    assert hub.downloads == []
    # held-out models are checked against the anchors they will be compared with
    anchors = resolve_members(["org/mlp-a"], progress=False)
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/wide"], role="held-out", like=anchors, progress=False)
    _one_line_error(excinfo, "org/wide", "org/mlp-a")


def test_unknown_repo_and_revision_offline_are_one_line_errors(hub, checkpoints):
    build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp1"], revision_name="v1")
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a", "org/does-not-exist"], progress=False)
    _one_line_error(excinfo, "org/does-not-exist", "HF_HUB_OFFLINE", "check the id", "hf download org/does-not-exist")
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a@v2"], progress=False)
    _one_line_error(excinfo, "org/mlp-a@v2", "cached: main, v1", "--revision v2")
    with pytest.raises(PopulationError) as excinfo:
        resolve_members([f"org/mlp-a@{fake_sha('nope')}"], progress=False)
    _one_line_error(excinfo, fake_sha("nope"))
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["./no/such/folder"], progress=False)
    _one_line_error(excinfo, "./no/such/folder", "no such folder")
    assert hub.downloads == []


def test_pickle_only_repo_and_folder_are_refused(hub, checkpoints):
    build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    build_hf_cache(hub.cache, "org/legacy", checkpoints["pickle"])
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a", "org/legacy"], progress=False)
    _one_line_error(excinfo, "org/legacy", "holds only pytorch_model.bin", "safetensors only")
    with pytest.raises(PopulationError) as excinfo:
        resolve_members([checkpoints["mlp0"], checkpoints["pickle"]], progress=False)
    _one_line_error(excinfo, checkpoints["pickle"], "holds only pytorch_model.bin")
    assert hub.downloads == []


def test_partly_cached_repo_names_the_missing_weights(hub, checkpoints):
    # the tree listing says model.safetensors exists, but only config.json made it into the cache
    with open(os.path.join(checkpoints["mlp0"], "config.json"), "rb") as f:
        config = f.read()
    sha = build_hf_cache(hub.cache, "org/partial", files={"config.json": config, "model.safetensors": b"x"})
    os.remove(os.path.join(repo_cache_folder(hub.cache, "org/partial"), "snapshots", sha, "model.safetensors"))
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/partial"], progress=False)
    _one_line_error(excinfo, "org/partial", "only partly cached")


def test_short_sha_resolves_offline_to_the_full_commit(hub, checkpoints):
    sha_main = build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    sha_v1 = build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp1"], revision_name="v1")
    assert sha_main[:7] != sha_v1[:7]
    (member,) = resolve_members([f"org/mlp-a@{sha_v1[:7]}"], progress=False)
    assert member.revision == sha_v1
    assert member.path == os.path.join(repo_cache_folder(hub.cache, "org/mlp-a"), "snapshots", sha_v1)
    assert _same_weights(member.path, checkpoints["mlp1"])
    (member,) = resolve_members([f"org/mlp-a@{sha_main[:12]}"], progress=False)
    assert member.revision == sha_main and _same_weights(member.path, checkpoints["mlp0"])
    # a prefix two cached commits share names no single commit
    build_hf_cache(hub.cache, "org/mlp-b", checkpoints["mlp0"], revision_name=None, sha="abcdef1" + "0" * 33)
    build_hf_cache(hub.cache, "org/mlp-b", checkpoints["mlp1"], revision_name=None, sha="abcdef1" + "1" * 33)
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-b@abcdef1"], progress=False)
    _one_line_error(excinfo, "org/mlp-b@abcdef1")


def test_fake_hfapi_refuses_keywords_the_real_api_does_not_take():
    FakeHfApi(token="x").create_repo("me/star", repo_type="model", private=None, exist_ok=True)
    with pytest.raises(TypeError):
        FakeHfApi(token="x").create_repo("me/star", repo_type="model", is_private=True)
    with pytest.raises(TypeError):
        FakeHfApi(token="x").upload_folder(repo_id="me/star", folder="/tmp", repo_type="model")
    with pytest.raises(TypeError):
        FakeHfApi(tokn="x")


def test_same_model_listed_twice_is_an_error(hub, checkpoints):
    sha = build_hf_cache(hub.cache, "org/mlp-a", checkpoints["mlp0"])
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["org/mlp-a", f"org/mlp-a@{sha}"], progress=False)
    _one_line_error(excinfo, "same model")


def test_online_lookup_maps_hub_errors_and_refuses_pickles_before_downloading(hub, monkeypatch):
    """With the Hub reachable, pinning uses HfApi.model_info; its answers decide before any download."""
    import httpx2
    import huggingface_hub
    import huggingface_hub.constants
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    def not_found(cls, url):
        return cls("404", response=httpx2.Response(404, request=httpx2.Request("GET", url)))

    class OnlineApi:
        def __init__(self, token=None):
            pass

        def model_info(self, repo_id, revision=None):
            if repo_id == "org/missing":
                raise not_found(RepositoryNotFoundError, f"https://huggingface.co/api/models/{repo_id}")
            if revision == "nope":
                raise not_found(RevisionNotFoundError, f"https://huggingface.co/api/models/{repo_id}/revision/nope")
            files = ["config.json", "pytorch_model.bin"]
            return argparse.Namespace(sha=fake_sha(repo_id), siblings=[argparse.Namespace(rfilename=f) for f in files])

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", OnlineApi)
    cases = {
        "org/missing": ("Hub model 'org/missing' not found", "check the id"),
        "org/legacy@nope": ("org/legacy has no revision 'nope'",),
        "org/legacy": ("org/legacy holds only pytorch_model.bin", "safetensors only"),
    }
    for source, needles in cases.items():
        with pytest.raises(PopulationError) as excinfo:
            resolve_members([source], progress=False)
        _one_line_error(excinfo, *needles)
    assert hub.downloads == []


# ------------------------------------------------------------------------------------------ run dir
def _barriers(mean):
    return {f"{split}_{kind}_barrier": {"mean": mean if kind == "loss" else 0.0, "std": 0.01}
            for split in ("train", "test") for kind in ("loss", "accuracy")}


# the layout written by star_merge.evaluation.report
REPORT = {
    "summary": {
        "star_vs_held_out": _barriers(0.0375),
        "anchor_vs_held_out": _barriers(0.5),
        "loss_barrier_ratio": {"train": 0.075, "test": 0.075},
        "star_test_accuracy": 0.7425,
        "star_test_nll": 0.8125,
        "star_train_loss": 0.25,
        "mean_anchor_test_accuracy": 0.75,
        "mean_anchor_test_nll": 0.9,
    },
    "models": {
        "star": {"role": "star", "train": {"loss": 0.25, "accuracy": 0.9},
                 "test": {"accuracy": 0.7425, "nll": 0.8125, "ece": 0.03125}},
        "anchor-00": {"role": "anchor", "path": "/cache/snap/a", "train": {"loss": 0.2, "accuracy": 0.95},
                      "test": {"accuracy": 0.75, "nll": 0.9, "ece": 0.06}},
    },
}


@pytest.fixture
def run_dir(tmp_path, checkpoints):
    """A hand-made run directory: manifest, star, report, a plot, a BMA folder with code."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(checkpoints["mlp0"], run / "star")
    members = [
        {"name": "anchor-00", "role": "anchor", "path": "/cache/snap/a", "source": "org/mlp-a", "repo_id": "org/mlp-a", "revision": fake_sha("a")},
        {"name": "anchor-01", "role": "anchor", "path": "/cache/snap/b", "source": "org/mlp-b@v1", "repo_id": "org/mlp-b", "revision": fake_sha("b")},
        {"name": "held-out-00", "role": "held-out", "path": "population/held-out-00", "source": "population/held-out-00", "repo_id": None, "revision": None},
    ]
    manifest = {"config": {"num_train_epochs": 2, "mu": 1.0}, "data": {"dataset_name": "mnist1d", "test_split": "test"},
                "model_type": "star-mlp", "model_input_name": "input_values", "members": members}
    (run / "starlight.json").write_text(json.dumps(manifest))
    (run / "report.json").write_text(json.dumps(REPORT))
    (run / "barriers.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    bma = run / "bma"
    shutil.copytree(checkpoints["mlp1"], bma)
    cfg = json.loads((bma / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_star_bma.StarBMAConfig",
                       "AutoModelForSequenceClassification": "modeling_star_bma.StarBMAForClassification"}
    (bma / "config.json").write_text(json.dumps(cfg))
    (bma / "modeling_star_bma.py").write_text("# code\n")
    (bma / "configuration_star_bma.py").write_text("# code\n")
    return str(run)


def _tree_digest(folder: str) -> dict[str, str]:
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def test_upload_plan_lists_exactly_the_published_files(run_dir):
    plan = upload_plan(run_dir, "me/star", bma_repo_id="me/star-bma")
    assert all(isinstance(f, PlannedFile) for f in plan)
    star = {f.path_in_repo: f for f in plan if f.repo_id == "me/star"}
    bma = {f.path_in_repo: f for f in plan if f.repo_id == "me/star-bma"}
    assert set(star) == {"config.json", "model.safetensors", "barriers.png", "report.json", "README.md"}
    assert set(bma) == {"config.json", "model.safetensors", "modeling_star_bma.py", "configuration_star_bma.py", "README.md"}
    assert star["model.safetensors"].local_path == os.path.join(run_dir, "star", "model.safetensors")
    assert star["model.safetensors"].size == os.path.getsize(os.path.join(run_dir, "star", "model.safetensors"))
    assert star["README.md"].local_path is None and star["README.md"].size > 0
    assert [f.repo_id for f in upload_plan(run_dir, "me/star")] == ["me/star"] * len(star)
    with pytest.raises(PushError) as excinfo:
        upload_plan(run_dir, "me/star", bma_repo_id="me/star")
    _one_line_error(excinfo, "--bma-repo-id")
    with pytest.raises(PushError) as excinfo:
        upload_plan(run_dir, "not a repo id")
    _one_line_error(excinfo, "not a repo id", "org/name")


def test_model_card_metadata_and_model_index_match_the_report(run_dir):
    from huggingface_hub import ModelCard

    path = write_model_card(run_dir, repo_id="me/star")
    card = ModelCard.load(path)
    data = card.data
    assert data.library_name == "star-merge"  # built-in star-mlp: loads after `import star_merge`
    assert data.license == "apache-2.0"
    assert data.base_model == ["org/mlp-a", "org/mlp-b"]
    assert {"star-merge", "starlight", "model-merging", "star-mlp"} <= set(data.tags)
    values = {r.metric_name: r.metric_value for r in data.eval_results}
    summary, star_row = REPORT["summary"], REPORT["models"]["star"]["test"]
    assert values == {
        "Test accuracy (star)": summary["star_test_accuracy"],
        "Test NLL (star)": summary["star_test_nll"],
        "Test ECE (star)": star_row["ece"],
        "Train loss (star)": summary["star_train_loss"],
        "Test accuracy (mean anchor, baseline)": summary["mean_anchor_test_accuracy"],
        "Test NLL (mean anchor, baseline)": summary["mean_anchor_test_nll"],
        "Test loss barrier, star ↔ held-out (mean)": summary["star_vs_held_out"]["test_loss_barrier"]["mean"],
        "Test loss barrier, anchor ↔ held-out (mean, baseline)": summary["anchor_vs_held_out"]["test_loss_barrier"]["mean"],
        "Train loss barrier, star ↔ held-out (mean)": summary["star_vs_held_out"]["train_loss_barrier"]["mean"],
        "Train loss barrier, anchor ↔ held-out (mean, baseline)": summary["anchor_vs_held_out"]["train_loss_barrier"]["mean"],
    }
    assert {r.dataset_split for r in data.eval_results if r.metric_name.startswith("Train")} == {"train"}
    assert {r.dataset_type for r in data.eval_results} == {"mnist1d"}
    text = card.text
    # the paper's metric first; the verdict computed from the numbers: accuracy 74.25% is 0.75 pt below the
    # anchors' 75% (allowed: 1 pt) and NLL 0.8125 <= 0.9, so the star is good
    assert text.index("train-loss barrier ratio (paper's metric) 0.075") < text.index("test-loss barrier ratio 0.075")
    assert "Verdict: star is a good solution" in text
    # the verdict is the first line under the title (was: after the intro and head notes, line 70 of the file)
    body = [line for line in text.splitlines() if line.strip() and not line.startswith("<!--")]
    assert body[0].startswith("# ") and body[1].startswith("**Verdict: "), body[:3]
    assert "![barriers](barriers.png)" in text
    assert 'AutoModel.from_pretrained("me/star")' in text and "import star_merge" in text
    assert f"https://huggingface.co/org/mlp-b/tree/{fake_sha('b')}" in text
    assert "2403.07968" in text and "@inproceedings{sonthalia2025star" in text
    assert "/cache/snap" not in text  # no local absolute paths leak into a public card
    bma_card = ModelCard.load(os.path.join(run_dir, "bma", "README.md"))
    assert "trust_remote_code=True" in bma_card.text and "AutoModelForSequenceClassification" in bma_card.text


def test_card_metrics_reads_what_the_report_holds_and_skips_the_rest():
    from star_merge.evaluation.summary import RunSummary
    from star_merge.hub.model_card import card_metrics

    assert card_metrics({}) == []
    report = {"summary": {"star_vs_held_out": {"test_loss_barrier": {"mean": 0.125, "std": 0.0, "n": 1}},
                          "star_test_accuracy": float("nan"), "star_test_nll": True},
              "models": {"star": {"test": {"ece": 0.5}}}}
    assert {r.metric_name: r.metric_value for r in card_metrics(report)} == {
        "Test ECE (star)": 0.5,
        "Test loss barrier, star ↔ held-out (mean)": 0.125,
    }
    summary = RunSummary.from_report(report)  # NaN and bools are not numbers; absent groups are empty
    assert summary.star_test_accuracy is None and summary.star_test_nll is None
    assert summary.group("anchor_vs_held_out").test_loss_barrier.n == 0


def test_model_card_update_keeps_user_text_and_refreshes_metrics(run_dir):
    from huggingface_hub import ModelCard

    path = write_model_card(run_dir, repo_id="me/star")
    card = ModelCard.load(path)
    card.data.tags = card.data.tags + ["my-tag"]
    card.text = "My intro.\n\n" + card.text + "\nMy closing notes.\n"
    card.save(path)
    report = json.loads(json.dumps(REPORT))
    report["summary"]["star_test_accuracy"] = 0.8
    with open(os.path.join(run_dir, "report.json"), "w") as f:
        json.dump(report, f)

    write_model_card(run_dir, repo_id="me/star")

    updated = ModelCard.load(path)
    assert updated.text.startswith("My intro.") and updated.text.rstrip().endswith("My closing notes.")
    assert updated.text.count(END_MARKER) == 1
    assert "my-tag" in updated.data.tags and updated.data.tags.count("star-merge") == 1
    assert {r.metric_name: r.metric_value for r in updated.data.eval_results}["Test accuracy (star)"] == 0.8
    with pytest.raises(FileExistsError):
        write_model_card(run_dir, overwrite=False)


# ------------------------------------------------------------------------------------------ pushing
def _bind_like_real_hfapi(method: str, *args, **kwargs) -> None:
    """Raise TypeError unless the call fits the signature of the real ``huggingface_hub.HfApi.<method>``."""
    import inspect

    from huggingface_hub.hf_api import HfApi as RealHfApi

    inspect.signature(getattr(RealHfApi, method)).bind(None, *args, **kwargs)


class FakeHfApi:
    """Records create_repo / upload_folder calls and what the staged folder held at upload time.

    Every call is first bound to the real ``HfApi`` method's signature, so a keyword the real API does
    not take (or a positional argument it takes by keyword only) fails here as it would on the Hub.
    """

    instances: ClassVar[list[FakeHfApi]] = []
    fail_on: ClassVar[str | None] = None

    def __init__(self, *args, **kwargs):
        _bind_like_real_hfapi("__init__", *args, **kwargs)
        self.token = kwargs.get("token", args[1] if len(args) > 1 else None)
        self.calls = []
        FakeHfApi.instances.append(self)

    def create_repo(self, *args, **kwargs):
        _bind_like_real_hfapi("create_repo", *args, **kwargs)
        repo_id = kwargs.pop("repo_id", None) or args[0]
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, *args, **kwargs):
        _bind_like_real_hfapi("create_branch", *args, **kwargs)
        repo_id = kwargs.pop("repo_id", None) or args[0]
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, *args, **kwargs):
        _bind_like_real_hfapi("upload_folder", *args, **kwargs)
        assert not args, "upload_folder takes keyword arguments only"
        repo_id, folder_path = kwargs.pop("repo_id"), kwargs.pop("folder_path")
        if repo_id == FakeHfApi.fail_on:
            raise OSError("connection reset by peer\nmore details")
        staged = {}
        for root, _, names in os.walk(folder_path):
            for n in names:
                p = os.path.join(root, n)
                with open(p, "rb") as f:
                    staged[os.path.relpath(p, folder_path)] = f.read()
        self.calls.append(("upload_folder", repo_id, {**kwargs, "staged": staged}))
        from huggingface_hub.hf_api import CommitInfo  # what the real method returns (a str: the commit url)

        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/{fake_sha(repo_id)}",
                          commit_message=kwargs.get("commit_message") or "", commit_description="",
                          oid=fake_sha(repo_id))


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    FakeHfApi.instances = []
    FakeHfApi.fail_on = None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_push_publishes_only_the_runs_own_regular_files(run_dir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    os.symlink(secret, os.path.join(run_dir, "star", "tokenizer_config.json"))  # a link to a system file
    os.symlink(secret, os.path.join(run_dir, "report.md"))
    with open(os.path.join(run_dir, "star", "notes.txt"), "w") as f:  # a stray file
        f.write("private")
    plan = upload_plan(run_dir, "me/star", bma_repo_id="me/star-bma")
    star = {f.path_in_repo for f in plan if f.repo_id == "me/star"}
    assert star == {"config.json", "model.safetensors", "barriers.png", "report.json", "README.md"}
    assert all(f.local_path is None or not os.path.islink(f.local_path) for f in plan)


def test_push_refuses_an_unevaluated_run_and_bad_weights(run_dir):
    report = os.path.join(run_dir, "report.json")
    good = open(report).read()
    with open(report, "w") as f:
        json.dump({"training": {}}, f)  # trained, never evaluated
    with pytest.raises(PushError) as excinfo:
        upload_plan(run_dir, "me/star")
    _one_line_error(excinfo, "not been evaluated")
    with open(report, "w") as f:
        f.write(good)
    weights = os.path.join(run_dir, "star", "model.safetensors")
    whole = open(weights, "rb").read()
    with open(weights, "wb") as f:
        f.write(whole[: len(whole) // 2])  # truncated
    with pytest.raises(PushError) as excinfo:
        upload_plan(run_dir, "me/star")
    _one_line_error(excinfo, "truncated")
    star = build_model(StarMLPConfig(**MLP), 0)
    with torch.no_grad():
        next(star.parameters()).fill_(float("nan"))
    save_checkpoint(star, os.path.join(run_dir, "star"), overwrite=True)
    with pytest.raises(PushError) as excinfo:
        upload_plan(run_dir, "me/star")
    _one_line_error(excinfo, "non-finite")


@pytest.mark.parametrize("private", [False, True])
def test_push_run_makes_one_commit_per_repo(run_dir, fake_api, private):
    before = _tree_digest(run_dir)
    result = push_run(run_dir, "me/star", bma_repo_id="me/star-bma", private=private)

    calls = [c for api in fake_api.instances for c in api.calls]
    assert [(c[0], c[1]) for c in calls] == [
        ("create_repo", "me/star"), ("upload_folder", "me/star"),
        ("create_repo", "me/star-bma"), ("upload_folder", "me/star-bma"),
    ]
    for name, _, kwargs in calls:
        if name == "create_repo":
            assert kwargs["exist_ok"] is True
            assert kwargs["private"] is (True if private else None)  # None: the Hub's default visibility
    plan = result["files"]
    for _, repo, kwargs in (c for c in calls if c[0] == "upload_folder"):
        staged = kwargs["staged"]
        expected = {f.path_in_repo: f for f in plan if f.repo_id == repo}
        assert set(staged) == set(expected)
        for rel, f in expected.items():
            assert len(staged[rel]) == f.size
            if f.local_path is not None and not rel.endswith(".json"):
                with open(f.local_path, "rb") as fh:
                    assert staged[rel] == fh.read()
            assert b"/cache/snap" not in staged[rel] and str(run_dir).encode() not in staged[rel]  # no local paths
        assert staged["README.md"].startswith(b"---\n")
    assert result["commits"] == {r: f"https://huggingface.co/{r}/commit/{fake_sha(r)}" for r in ("me/star", "me/star-bma")}
    assert _tree_digest(run_dir) == before


def test_failed_upload_leaves_the_run_untouched_and_says_how_to_retry(run_dir, fake_api):
    write_model_card(run_dir, repo_id="me/star")
    before = _tree_digest(run_dir)
    fake_api.fail_on = "me/star-bma"
    with pytest.raises(PushError) as excinfo:
        push_run(run_dir, "me/star", bma_repo_id="me/star-bma")
    _one_line_error(excinfo, "me/star-bma", "connection reset by peer", "unchanged",
                    f"star-merge push {run_dir} --repo-id me/star --bma-repo-id me/star-bma")
    assert _tree_digest(run_dir) == before


def test_cli_dry_run_prints_the_plan_and_uploads_nothing(run_dir, fake_api, capsys):
    from star_merge.cli import main

    assert main(["push", run_dir, "--repo-id", "me/star", "--bma-repo-id", "me/star-bma", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert fake_api.instances == []
    for f in upload_plan(run_dir, "me/star", bma_repo_id="me/star-bma"):
        assert f.path_in_repo in out
        if f.local_path is not None:
            assert f.local_path in out
    assert "me/star: 5 files" in out and "me/star-bma: 5 files" in out

    assert main(["push", run_dir + "-missing", "--repo-id", "me/star"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a star-merge run directory" in err


def test_push_refuses_a_missing_bma_export(run_dir, fake_api):
    import shutil

    shutil.rmtree(os.path.join(run_dir, "bma"))
    with pytest.raises(PushError) as excinfo:
        push_run(run_dir, "me/star", bma_repo_id="me/star-bma")
    _one_line_error(excinfo, "BMA wrapper", "star-merge export-bma")
    assert fake_api.instances == []


# ------------------------------------------------------------------------------------------ live
@pytest.mark.staging
@pytest.mark.skipif(
    not (os.environ.get("HUGGINGFACE_CO_STAGING") == "1" and os.environ.get("HF_TOKEN")),
    reason="live Hub round trip: needs HUGGINGFACE_CO_STAGING=1 and HF_TOKEN for a hub-ci.huggingface.co account",
)
def test_live_round_trip_push_then_from_pretrained(run_dir):
    import uuid

    from huggingface_hub import HfApi
    from transformers import AutoModel

    api = HfApi()
    repo_id = f"{api.whoami()['name']}/star-merge-test-{uuid.uuid4().hex[:8]}"
    try:
        push_run(run_dir, repo_id, private=True)
        model = AutoModel.from_pretrained(repo_id)
        local = load_checkpoint(os.path.join(run_dir, "star")).state_dict()
        assert all(torch.equal(v, local[k]) for k, v in model.state_dict().items())
        members = resolve_members([repo_id], progress=False)
        assert members[0].revision == api.model_info(repo_id).sha
    finally:
        api.delete_repo(repo_id, missing_ok=True)


def test_pretraining_star_card_says_the_next_sentence_head_was_not_trained(run_dir):
    from star_merge.hub.model_card import build_model_card

    assert "Next-sentence head not trained" not in build_model_card(run_dir).text
    config_path = os.path.join(run_dir, "star", "config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["architectures"] = ["BertForPreTraining"]
    with open(config_path, "w") as f:
        json.dump(config, f)
    text = build_model_card(run_dir).text
    assert "Next-sentence head not trained" in text and "`cls.seq_relationship`" in text
    assert text.index("Next-sentence head not trained") < text.index("## Results")


def test_push_says_when_it_leaves_the_bma_out(run_dir, fake_api, caplog):
    """Without --bma-repo-id the run's bma/ is not pushed, and the push says so (was: without a word)."""
    import logging

    with caplog.at_level(logging.WARNING):
        push_run(run_dir, "me/star", dry_run=True)
    assert "the BMA wrapper" in caplog.text and "--bma-repo-id me/star-bma" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        push_run(run_dir, "me/star", bma_repo_id="me/star-bma", dry_run=True)
    assert "not pushed" not in caplog.text


def test_a_mistyped_relative_path_says_no_such_local_folder(tmp_path, checkpoints, monkeypatch):
    """``pop/m9`` beside a ``pop/`` folder holding m0, m1: "no such local folder", what pop/ holds (was: treated as
    a Hub id and told to pre-download it from the cache); an id whose first part is no local folder is unchanged."""
    import shutil

    for name in ("m0", "m1"):
        shutil.copytree(checkpoints["mlp0"], tmp_path / "pop" / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_members(["pop/m0"], progress=False)[0].path == str(tmp_path / "pop" / "m0")
    with pytest.raises(PopulationError) as excinfo:
        resolve_members(["pop/m0", "pop/m9"], progress=False)
    _one_line_error(excinfo, "'pop/m9': no such local folder (pop/ holds m0, m1)", "./pop/m9")
    assert "hf download" not in str(excinfo.value)
    with pytest.raises(PopulationError, match="hf download org/m9"):
        resolve_members(["org/m9"], progress=False, cache_dir=str(tmp_path / "empty-cache"))


def test_a_staged_push_of_a_run_holds_cards_and_no_absolute_path(run_dir, fake_api, tmp_path):
    """A unique temp path planted in every path-valued setting of the run (manifest config / data / members,
    report.json, the star's training_info.json) never reaches either staged folder; both hold their card."""
    import uuid

    planted = str(tmp_path / f"planted-{uuid.uuid4().hex}")
    manifest_path = os.path.join(run_dir, "starlight.json")
    manifest = json.loads(open(manifest_path).read())
    manifest["config"].update(output_dir=planted + "/out", init=planted + "/init", resume_from_checkpoint=planted)
    manifest["data"].update(dataset_name=planted + "/data", processor_name_or_path=planted + "/tok")
    manifest["members"][0].update(path=planted + "/a", source=planted + "/a")
    open(manifest_path, "w").write(json.dumps(manifest))
    report = dict(REPORT, config=manifest["config"], data=manifest["data"], members=manifest["members"])
    open(os.path.join(run_dir, "report.json"), "w").write(json.dumps(report))
    open(os.path.join(run_dir, "star", "training_info.json"), "w").write(json.dumps(
        {"starlight": manifest["config"], "history": [], "data": planted + "/data"}))
    push_run(run_dir, "me/star", bma_repo_id="me/star-bma")
    uploads = [c for api in fake_api.instances for c in api.calls if c[0] == "upload_folder"]
    assert [c[1] for c in uploads] == ["me/star", "me/star-bma"]
    for _, repo, kwargs in uploads:
        staged = kwargs["staged"]
        assert staged["README.md"].strip(), repo
        for name, content in staged.items():
            assert planted.encode() not in content and str(tmp_path).encode() not in content, (repo, name)
