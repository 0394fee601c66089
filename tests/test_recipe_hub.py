"""recipes/star.py with a population given by Hub ids, resolved offline from a hand-built HF cache."""

import json
import os
import subprocess
import sys

from hf_cache import build_hf_cache, fake_sha, offline_env

from star_merge.models import StarMLPConfig
from star_merge.population.training import build_model, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_population_from_hub_ids_end_to_end(tmp_path):
    hf_home = str(tmp_path / "hf")
    cache = os.path.join(hf_home, "hub")
    config = StarMLPConfig(hidden_sizes=[16, 16])
    shas = {}
    for i, repo in enumerate(["org/mlp-seed0", "org/mlp-seed1", "org/mlp-heldout"]):
        folder = save_checkpoint(build_model(config, seed=i), str(tmp_path / f"ckpt{i}"))
        shas[repo] = build_hf_cache(cache, repo, folder, revision_name="main")
    # a second branch of seed1 with other weights: "@v2" must pick it, not main
    v2 = save_checkpoint(build_model(config, seed=7), str(tmp_path / "ckpt-v2"))
    shas["org/mlp-seed1@v2"] = build_hf_cache(cache, "org/mlp-seed1", v2, revision_name="v2", sha=fake_sha("v2"))

    out = tmp_path / "run"
    env = dict(os.environ, **offline_env(hf_home), OMP_NUM_THREADS="1")
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "star.py"),
           "--anchors", "org/mlp-seed0", "org/mlp-seed1@v2", "--held_out", f"org/mlp-heldout@{shas['org/mlp-heldout']}",
           "--num_samples", "600", "--num_train_epochs", "1", "--bma_samples", "2", "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "starlight.json").read_text())
    members = {m["name"]: m for m in manifest["members"]}
    assert members["anchor-00"]["repo_id"] == "org/mlp-seed0"
    assert members["anchor-00"]["revision"] == shas["org/mlp-seed0"]
    assert members["anchor-01"]["source"] == "org/mlp-seed1@v2"
    assert members["anchor-01"]["revision"] == shas["org/mlp-seed1@v2"]
    assert members["held-out-00"]["revision"] == shas["org/mlp-heldout"]
    assert not (out / "population").exists()
    report = json.loads((out / "report.json").read_text())
    assert {m["repo_id"] for m in report["members"]} == {"org/mlp-seed0", "org/mlp-seed1", "org/mlp-heldout"}
    card = (out / "README.md").read_text()
    assert "org/mlp-seed0" in card and shas["org/mlp-seed1@v2"][:7] in card


def test_unknown_repo_fails_before_training(tmp_path):
    hf_home = str(tmp_path / "hf")
    os.makedirs(os.path.join(hf_home, "hub"))
    out = tmp_path / "run"
    env = dict(os.environ, **offline_env(hf_home))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "recipes", "star.py"), "--anchors", "org/nope",
                           "--output_dir", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "org/nope" in errors[0]
    assert not out.exists()
