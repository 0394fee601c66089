"""recipes/train_population.py on raw data and across processes: a raw-text population trained with its tokenizer
(the head sized from the dataset's ClassLabel), a raw-image population trained with augmentation by one process
and by two (`accelerate launch --num_processes 2`) giving the same members bit for bit, resumed member by member."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from raw_populations import TEXT_LABELS, digit_image_dataset, docstring_dataset, minilm_tokenizer_folder, vit_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "train_population.py")
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
BERT = {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 48, "max_position_embeddings": 128}
VIT = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
       "image_size": 16, "patch_size": 4, "num_channels": 3}
COMMON = ["--num_anchors", "2", "--num_held_out", "1", "--population_epochs", "2", "--population_batch_size", "32",
          "--population_learning_rate", "0.003"]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)


def _train(out, *args, processes: int = 1):
    launcher = [sys.executable] if processes == 1 else [
        ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--main_process_port", "29573", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd = [*launcher, RECIPE, *COMMON, "--output_dir", str(out), *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, cwd=ROOT)


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    base = tmp_path_factory.mktemp("digits")
    processor = base / "processor"
    vit_processor().save_pretrained(processor)
    return {"data": digit_image_dataset(str(base / "digits"), n_train=96, n_test=48), "processor": str(processor)}


def test_recipe_trains_a_raw_text_population(tmp_path):
    """On main: ``AttributeError: 'list' object has no attribute 'to'`` (raw text reached the model)."""
    data = docstring_dataset(str(tmp_path / "docs"), max_per_class=30)
    out = tmp_path / "pop"
    proc = _train(out, "--dataset_name", data, "--text_column", "text", "--max_seq_length", "32",
                  "--processor_name_or_path", minilm_tokenizer_folder(), "--model_type", "bert",
                  "--model_config", json.dumps(BERT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    member = out / "anchor-00"
    model = AutoModelForSequenceClassification.from_pretrained(member)
    assert model.config.num_labels == 4 and list(model.config.id2label.values()) == TEXT_LABELS  # the ClassLabel
    assert AutoTokenizer.from_pretrained(member)("hello world")["input_ids"][0] == 101  # saved with the member
    scores = pipeline("text-classification", model=str(member), top_k=None)(["Return a copy of the string."])[0]
    assert {s["label"] for s in scores} == set(TEXT_LABELS)
    assert sorted(p for p in os.listdir(out) if not p.startswith(".")) == ["anchor-00", "anchor-01", "held-out-00"]


def test_a_head_that_does_not_fit_is_named_as_a_model_config_setting(tmp_path):
    data = docstring_dataset(str(tmp_path / "docs"), max_per_class=10)
    proc = _train(tmp_path / "pop", "--dataset_name", data, "--text_column", "text", "--processor_name_or_path",
                  minilm_tokenizer_folder(), "--model_type", "bert", "--model_config", json.dumps({**BERT, "num_labels": 3}))
    assert proc.returncode == 2
    assert "num_labels=3" in proc.stderr and "4 classes" in proc.stderr and "head fits" not in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_two_processes_train_the_population_one_process_trains(digits, tmp_path):
    args = ["--dataset_name", digits["data"], "--input_column", "image", "--augment", "--processor_name_or_path",
            digits["processor"], "--model_type", "vit", "--model_config", json.dumps(VIT)]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = _train(one, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _train(two, *args, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "population (process 1)" in proc.stderr  # the second process trained its share
    names = ("anchor-00", "anchor-01", "held-out-00")
    for name in names:
        a, b = _weights(one / name), _weights(two / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert os.path.isfile(two / name / "preprocessor_config.json")
    w = [_weights(one / n) for n in names]
    assert not torch.equal(w[0]["classifier.weight"], w[1]["classifier.weight"])  # distinct seeds, distinct members
    # resumable member by member: only a removed member is trained again, and it comes back the same
    kept = os.path.getmtime(two / "anchor-00" / "model.safetensors")
    shutil.rmtree(two / "held-out-00")
    proc = _train(two, *args, processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.getmtime(two / "anchor-00" / "model.safetensors") == kept
    again = _weights(two / "held-out-00")
    assert all(torch.equal(again[k], w[2][k]) for k in again)
