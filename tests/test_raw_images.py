"""Raw images through the whole product: tiny ViTs saved with their image processor, a dataset with a PIL
``image`` column, recipes/star.py with and without --augment, and barrier on raw vs pre-processed pixels."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from raw_populations import digit_image_dataset, tiny_vit_config, train_population, vit_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "star.py")


@pytest.fixture(scope="module")
def image_population(tmp_path_factory):
    base = tmp_path_factory.mktemp("images")
    data = digit_image_dataset(str(base / "digits"))
    folders = train_population(tiny_vit_config(), vit_processor(), data, str(base / "pop"), ["a0", "a1", "h0"],
                               epochs=4, text=False)
    return {"base": base, "data": data, "anchors": folders[:2], "held_out": folders[2:]}


def _recipe(p, out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    cmd = [sys.executable, RECIPE, "--anchors", *p["anchors"], "--held_out", *p["held_out"], "--dataset_name",
           p["data"], "--input_column", "image", "--num_train_epochs", "2", "--per_device_train_batch_size", "32",
           "--learning_rate", "0.002", "--bma_samples", "2", "--eval_num_points", "5", "--output_dir", str(out), *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


_RUNS: dict = {}


def _image_run(p, augment: bool):
    """The recipe's run on the raw images (once per setting in this module)."""
    if augment not in _RUNS:
        out = p["base"] / f"run-aug{int(augment)}"
        proc = _recipe(p, out, *(["--augment"] if augment else []))
        assert proc.returncode == 0, proc.stderr[-3000:]
        _RUNS[augment] = out
    return _RUNS[augment]


@pytest.mark.parametrize("augment", [False, True])
def test_recipe_on_raw_images(image_population, augment):
    from transformers import AutoModelForImageClassification, pipeline

    import star_merge  # noqa: F401  (registers the BMA classes)

    p = image_population
    out = _image_run(p, augment)
    report = json.loads((out / "report.json").read_text())
    s = report["summary"]
    barriers = {g: s[g]["test_loss_barrier"] for g in ("star_vs_held_out", "anchor_vs_held_out")}
    print(f"IMAGE barriers augment={augment}", json.dumps(barriers))
    assert barriers["star_vs_held_out"]["n"] == 1 and barriers["anchor_vs_held_out"]["n"] == 2
    assert json.loads((out / "starlight.json").read_text())["data"]["augment"] is augment
    from datasets import load_from_disk

    images = load_from_disk(p["data"])["test"]["image"][:6]
    processor = vit_processor()
    for folder in ("star", "bma"):
        path = str(out / folder)
        assert os.path.isfile(os.path.join(path, "preprocessor_config.json"))
        got = pipeline("image-classification", model=path, top_k=10)(images)
        model = AutoModelForImageClassification.from_pretrained(path).eval()
        with torch.no_grad():
            probs = model(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits.softmax(-1)
        for scores, row in zip(got, probs):
            by_label = {s["label"]: s["score"] for s in scores}
            for i, prob in enumerate(row):
                assert by_label[model.config.id2label[i]] == pytest.approx(float(prob), abs=1e-5)
    card = (out / "README.md").read_text()
    assert "pipeline_tag: image-classification" in card


def test_barrier_on_raw_images_equals_barrier_on_processed_pixels(image_population, tmp_path):
    from datasets import Array3D, ClassLabel, Dataset, DatasetDict, Features, load_from_disk

    from star_merge.data import DataArguments
    from star_merge.evaluation.barrier import barrier_between

    p = image_population
    raw = load_from_disk(p["data"])
    processor = vit_processor()
    # reference pre-processing written by hand: rescale to [0, 1], normalise with mean 0.5 / std 0.5, 16x16
    features = Features({"pixel_values": Array3D(shape=(3, 16, 16), dtype="float32"),
                         "label": ClassLabel(names=[str(i) for i in range(10)])})
    processed = {}
    for split in ("train", "test"):
        imgs = [np.asarray(im.convert("RGB").resize((16, 16), resample=2), dtype=np.float32) for im in raw[split]["image"]]
        pixels = np.stack([(im / 255.0 - 0.5) / 0.5 for im in imgs]).transpose(0, 3, 1, 2)
        ref = processor(images=raw[split]["image"][:4], return_tensors="np")["pixel_values"]
        np.testing.assert_allclose(pixels[:4], ref, atol=1e-5)  # the hand computation is the processor's
        processed[split] = Dataset.from_dict({"pixel_values": pixels, "label": raw[split]["label"]}, features=features)
    DatasetDict(processed).save_to_disk(str(tmp_path / "pixels"))
    kw = dict(num_points=3, splits=["test"], progress=False)
    a, b = p["anchors"][0], p["held_out"][0]
    on_raw = barrier_between(a, b, DataArguments(dataset_name=p["data"], input_column="image"), **kw)
    on_pixels = barrier_between(a, b, DataArguments(dataset_name=str(tmp_path / "pixels")), **kw)
    np.testing.assert_allclose(on_raw.curves["test"].losses, on_pixels.curves["test"].losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_raw.curves["test"].accuracies, on_pixels.curves["test"].accuracies)


def test_augmentation_is_a_pure_function_of_seed_epoch_index():
    from PIL import Image

    from star_merge.tasks.image import INDEX_COLUMN, ImageTransform

    rng = np.random.default_rng(0)
    small = [Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)) for _ in range(4)]
    large = [Image.fromarray(rng.integers(0, 255, (96, 80, 3), dtype=np.uint8)) for _ in range(4)]
    for images in (small, large):
        t = ImageTransform(vit_processor(), augment=True, seed=3)
        batch = {"image": images, INDEX_COLUMN: [0, 1, 2, 3], "labels": [0, 1, 2, 3]}
        first = t(batch)["pixel_values"]
        assert first.shape == (4, 3, 16, 16)
        # reordered batch, fresh transform: each example's draw depends only on (seed, epoch, index)
        again = ImageTransform(vit_processor(), augment=True, seed=3)(
            {"image": images[::-1], INDEX_COLUMN: [3, 2, 1, 0], "labels": [3, 2, 1, 0]})["pixel_values"]
        torch.testing.assert_close(again, first.flip(0))
        t.set_epoch(1)
        assert not torch.equal(t(batch)["pixel_values"], first)  # a new epoch draws anew
        plain = t.plain()({"image": images, "labels": [0, 1, 2, 3]})["pixel_values"]
        torch.testing.assert_close(plain, vit_processor()(images=images, return_tensors="pt")["pixel_values"])
        assert not torch.equal(plain, first)


def test_evaluate_evaluator_gives_the_reports_accuracy(image_population):
    """`evaluate.evaluator("image-classification")` on the star and BMA exports equals the report's test accuracy;
    star-merge's NLL / ECE modules on the pipelines' probabilities equal the report's to 1e-6."""
    evaluate = pytest.importorskip("evaluate", reason="the `evaluate` dependency is not installed here")
    from datasets import load_from_disk
    from transformers import pipeline

    import star_merge
    from star_merge.metrics import evaluator

    out = _image_run(image_population, False)
    report = json.loads((out / "report.json").read_text())
    data = load_from_disk(image_population["data"])["test"]
    accuracy = evaluate.load(star_merge.metric_path("accuracy"))
    nll, ece = (evaluate.load(star_merge.metric_path(n)) for n in ("nll", "ece"))
    for folder, scores in (("star", report["models"]["star"]), ("bma", report["ensembles"]["bma"])):
        pipe = pipeline("image-classification", model=str(out / folder))
        got = evaluator("image-classification").compute(
            model_or_pipeline=pipe, data=data, metric=accuracy, input_column="image", label_column="label",
            label_mapping=pipe.model.config.label2id)
        assert got["accuracy"] == pytest.approx(scores["test"]["accuracy"], abs=1e-9), folder
        id2label = pipe.model.config.id2label
        rows = pipe(list(data["image"]), top_k=len(id2label))
        probs = [[next(r["score"] for r in row if r["label"] == id2label[c]) for c in range(len(id2label))]
                 for row in rows]
        assert nll.compute(predictions=probs, references=data["label"])["nll"] == pytest.approx(
            scores["test"]["nll"], abs=1e-6), folder
        assert ece.compute(predictions=probs, references=data["label"])["ece"] == pytest.approx(
            scores["test"]["ece"], abs=1e-6), folder
