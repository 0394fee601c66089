"""A timm population through the whole product: 3 anchors + 1 held-out tiny timm ResNets (built with kwargs,
saved as timm saves them, one anchor as transformers' TimmWrapper saves it) on raw digit images, through
``accelerate launch recipes/star.py``; star and BMA predictions through ``pipeline`` equal the direct calls, and
the star loads with ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` with equal predictions."""

import json
import os
import subprocess
import sys

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed: the [vision] extra runs in `make test-vision`")

from raw_populations import TIMM_RESNET_ARGS, digit_image_dataset, timm_population, timm_processor  # noqa: E402

pytestmark = [pytest.mark.vision, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("timm")
    data = digit_image_dataset(str(base / "digits"))
    folders = timm_population(data, str(base / "pop"), ["a0", "a1", "a2", "h0"], transformers_format=("a2",),
                              epochs=4)
    out = base / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [ACCELERATE, "launch", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", os.path.join(ROOT, "recipes", "star.py"), "--anchors", *folders[:3],
           "--held_out", folders[3], "--dataset_name", data, "--input_column", "image", "--num_train_epochs", "2",
           "--per_device_train_batch_size", "32", "--learning_rate", "0.002", "--bma_samples", "2",
           "--eval_num_points", "5", "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"data": data, "folders": folders, "out": out}


def test_the_population_is_held_as_timm_writes_it(timm_run):
    for folder in timm_run["folders"]:
        config = json.loads(open(os.path.join(folder, "config.json")).read())
        assert config["architecture"] == "resnet18" and "pretrained_cfg" in config
        assert ("model_type" in config) == folder.endswith("a2")  # a2: saved by transformers' TimmWrapper
    report = json.loads((timm_run["out"] / "report.json").read_text())
    s = report["summary"]
    print("TIMM barriers", json.dumps({g: s[g]["test_loss_barrier"] for g in ("star_vs_held_out", "anchor_vs_held_out")}))
    assert s["star_vs_held_out"]["test_loss_barrier"]["n"] == 1 and s["anchor_vs_held_out"]["test_loss_barrier"]["n"] == 3


@pytest.mark.parametrize("folder", ["star", "bma"])
def test_pipeline_equals_direct_calls(timm_run, folder):
    from datasets import load_from_disk
    from transformers import AutoModelForImageClassification, pipeline

    import star_merge  # noqa: F401  (registers the BMA classes)

    path = str(timm_run["out"] / folder)
    images = load_from_disk(timm_run["data"])["test"]["image"][:6]
    got = pipeline("image-classification", model=path, top_k=10)(images)
    model = AutoModelForImageClassification.from_pretrained(path).eval()
    pixels = timm_processor()(images, return_tensors="pt")["pixel_values"]  # the population's own processing
    with torch.no_grad():
        probs = model(pixel_values=pixels).logits.softmax(-1)
    for scores, row in zip(got, probs):
        by_label = {s["label"]: s["score"] for s in scores}
        for i, prob in enumerate(row):
            assert by_label[model.config.id2label[i]] == pytest.approx(float(prob), abs=1e-5)


def test_the_star_loads_with_timm(timm_run):
    from transformers import AutoModelForImageClassification

    star = timm_run["out"] / "star"
    direct = AutoModelForImageClassification.from_pretrained(star).eval()
    native = timm.create_model("resnet18", pretrained=True, num_classes=10, **TIMM_RESNET_ARGS,
                               pretrained_cfg_overlay=dict(file=str(star / "model.safetensors"), num_classes=10)).eval()
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(5, 3, 24, 24, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(native(pixels), direct(pixel_values=pixels).logits, rtol=1e-5, atol=1e-5)
        anchor = timm.create_model("resnet18", pretrained=True, num_classes=10, **TIMM_RESNET_ARGS,
                                   pretrained_cfg_overlay=dict(file=os.path.join(timm_run["folders"][0],
                                                                                 "model.safetensors"), num_classes=10)).eval()
        assert not torch.allclose(anchor(pixels), native(pixels))  # control: the star is not an anchor
