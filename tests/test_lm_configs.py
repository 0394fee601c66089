"""recipes/configs/polypythia.yaml and multiberts.yaml run offline: tiny stand-in models under the exact Hub repo
ids in a hand-built HF cache; the configs' own anchors, held-out models, task and settings, with the Hub text
dataset swapped for a local corpus and the sizes shrunk (flags and a copied config cannot reach the Hub here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from hf_cache import build_hf_cache, offline_env
from lm_fixtures import bert_config, build_tokenizer, neox_config, write_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "recipes", "configs")
SHRINK = {"block_size": 32, "max_train_samples": 32, "max_eval_samples": 16, "per_device_train_batch_size": 16,
          "per_device_eval_batch_size": 16, "eval_pairs": 2, "eval_num_points": 3, "bma_samples": 2}


@pytest.mark.parametrize("name, kind, arch, repo_count", [
    ("polypythia", "causal", "GPTNeoXForCausalLM", 9),
    ("multiberts", "masked", "BertForPreTraining", 7),
])
def test_real_population_config_runs_offline(tmp_path, name, kind, arch, repo_count):
    from star_merge.modeling import build_model
    from star_merge.population import save_checkpoint

    with open(os.path.join(CONFIGS, f"{name}.yaml")) as f:
        config = yaml.safe_load(f)
    repos = config["anchors"] + config["held_out"]
    assert len(repos) == repo_count and config["task"] == ("causal-lm" if kind == "causal" else "masked-lm")
    tok = build_tokenizer(120, bert_template=kind == "masked")
    make = neox_config if kind == "causal" else bert_config
    hf_home = str(tmp_path / "hf")
    shas = {}
    for i, repo in enumerate(repos):
        model = build_model(make(len(tok), architectures=[arch], hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1), seed=i)
        folder = save_checkpoint(model, str(tmp_path / "ckpt" / str(i)), processor=tok)
        shas[repo] = build_hf_cache(os.path.join(hf_home, "hub"), repo, folder, revision_name="main")
    local = dict(config, dataset_name=write_corpus(tmp_path / "corpus"), **SHRINK)
    local.pop("dataset_config_name")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(local))

    out = tmp_path / "run"
    env = dict(os.environ, **offline_env(hf_home), OMP_NUM_THREADS="1")
    env.pop("HF_TOKEN", None)
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "star.py"), "--config", str(path), "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "starlight.json").read_text())
    members = {m["repo_id"]: m for m in manifest["members"]}
    assert set(members) == set(repos)
    assert all(members[r]["revision"] == shas[r] for r in repos)  # pinned to the cached commit
    assert [m["role"] for m in manifest["members"]].count("held-out") == len(config["held_out"])
    report = json.loads((out / "report.json").read_text())
    assert report["task"]["name"] == config["task"] and report["data"]["block_size"] == 32
    assert len(report["barriers"]["star_vs_held_out"]) == len(config["held_out"])
    assert (out / "star" / "tokenizer.json").is_file() and (out / "bma" / "tokenizer.json").is_file()
