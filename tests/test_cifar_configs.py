"""The paper's CIFAR-10 configs (recipes/configs/cifar10_*.yaml): they parse into the paper's settings and the
architectures the literature counts, and one runs end to end through recipes/star.py offline, its Hub dataset
``uoft-cs/cifar10`` served by a hand-built ``datasets`` cache (a small stand-in with ``img`` + ``label`` columns
like the real one) and tiny widths / epochs given on the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hf_cache import build_dataset_cache, offline_env
from test_bma import _HIDE_STAR_MERGE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "recipes", "configs")

# Parameter counts from the architectures' papers / reference code: ResNet-18 (kuangliu/pytorch-cifar:
# 11,173,962), VGG-11-BN (kuangliu's 9,231,114 less its 2,752 convolution biases, which BatchNorm makes
# redundant and ours omit), WRN-22-1 (0.27M), DenseNet-BC-40-12 (0.18M; DenseNet-BC-100-12 0.8M).
EXPECTED = {
    "cifar10_resnet18.yaml": ("star-cifar-resnet", 11_173_962, 0.0),
    "cifar10_vgg11.yaml": ("star-cifar-vgg", 9_228_362, 0.0),
    "cifar10_wrn22.yaml": ("star-cifar-wrn", 0.27e6, 0.02),
    "cifar10_densenet40.yaml": ("star-cifar-densenet", 0.18e6, 0.03),
}


def parse(*argv):
    from star_merge.argparsing import ArgumentsParser
    from star_merge.data import DataArguments
    from star_merge.pipeline import RunArguments
    from star_merge.population import PopulationArguments
    from star_merge.starlight import StarlightConfig

    parser = ArgumentsParser([StarlightConfig, DataArguments, PopulationArguments, RunArguments])
    return parser.parse(list(argv))[0]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_into_the_paper_setting(name):
    from transformers import AutoModelForImageClassification

    config, data, pop, _ = parse("--config", os.path.join(CONFIGS, name))
    model_type, params, rel = EXPECTED[name]
    assert data.dataset_name == "uoft-cs/cifar10" and pop.model_type == model_type
    assert (pop.num_anchors, pop.num_held_out, pop.population_epochs, pop.population_batch_size) == (50, 5, 200, 128)
    # the architecture's defaults: the paper's recipe (population/defaults.py), for members and star alike
    assert (pop.population_optimizer, pop.population_learning_rate, pop.population_weight_decay) == ("sgd", 0.1, 5e-4)
    assert (config.optimizer, config.learning_rate, config.weight_decay, config.num_train_epochs) == ("sgd", 0.1, 5e-4, 200)
    assert pop.train_args().lr_scheduler_type == "cosine"
    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(pop.build_config(num_labels=10))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=rel)


@pytest.mark.parametrize("build, params, rel", [
    (lambda m: m.StarCifarResNetConfig(depth=20), 0.27e6, 0.02),  # He et al. 2016, Table 6
    (lambda m: m.StarCifarWRNConfig(depth=28, widen_factor=10), 36.5e6, 0.01),  # Zagoruyko & Komodakis, Table 5
    (lambda m: m.StarCifarDenseNetConfig(depth=40, growth_rate=12, bottleneck=False), 1.0e6, 0.03),  # Huang et al.
    (lambda m: m.StarCifarDenseNetConfig(depth=100, growth_rate=12), 0.8e6, 0.05),  # DenseNet-BC-100-12
])
def test_architectures_have_the_papers_parameter_counts(build, params, rel):
    from transformers import AutoModelForImageClassification

    import star_merge.models as models

    with torch.device("meta"):
        model = AutoModelForImageClassification.from_config(build(models))
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(params, rel=rel)


def test_other_architectures_keep_the_generic_recipe():
    _, data, pop, _ = parse("--config", os.path.join(CONFIGS, "mnist1d_cnn1d.yaml"))
    assert (pop.population_optimizer, pop.population_weight_decay, data.augment) == ("adamw", 0.0, None)
    _, _, pop, _ = parse("--config", os.path.join(CONFIGS, "cifar10_vgg11.yaml"), "--population_learning_rate", "0.05",
                         "--population_optimizer", "adamw")
    assert (pop.population_optimizer, pop.population_learning_rate, pop.population_weight_decay) == ("adamw", 0.05, 5e-4)
    # augment: unset (None: the architecture decides), a bare flag, or an explicit value
    assert [parse(*flags)[1].augment for flags in ([], ["--augment"], ["--augment", "false"])] == [None, True, False]


def stand_in_cifar10(n_train=48, n_test=24):
    """32x32 RGB images whose mean colour depends on the class (learnable), CIFAR-10's column names and labels."""
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 10, n)
        images = [PILImage.fromarray(np.clip(rng.normal(25 * y, 30, (32, 32, 3)), 0, 255).astype(np.uint8))
                  for y in labels]
        return Dataset.from_dict({"img": images, "label": labels.tolist()},
                                 features=Features({"img": Image(), "label": ClassLabel(names=names)}))

    return {"train": split(n_train), "test": split(n_test)}


@pytest.mark.slow
def test_cifar10_config_runs_offline_end_to_end(tmp_path):
    from PIL import Image as PILImage
    from transformers import AutoModelForImageClassification, pipeline

    from star_merge.models import StarCifarResNetConfig  # noqa: F401  (registers the built-in models)

    hf_home = str(tmp_path / "hf")
    datasets_cache = os.path.join(hf_home, "datasets")
    build_dataset_cache(datasets_cache, "uoft-cs/cifar10", stand_in_cifar10(), config_name="plain_text")
    env = dict(os.environ, **offline_env(hf_home), HF_DATASETS_CACHE=datasets_cache, OMP_NUM_THREADS="1")
    env.pop("HF_TOKEN", None)
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(ROOT, "recipes", "star.py"), "--config",
           os.path.join(CONFIGS, "cifar10_resnet18.yaml"), "--model_config", '{"depth": 20, "width": 2, "image_size": 8}',
           "--num_anchors", "2", "--num_held_out", "1", "--population_epochs", "1", "--num_train_epochs", "1",
           "--population_batch_size", "16", "--per_device_train_batch_size", "16", "--bma_samples", "2",
           "--eval_num_points", "3", "--output_dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "starlight.json").read_text())
    assert manifest["data"]["dataset_name"] == "uoft-cs/cifar10" and manifest["data"]["augment"] is True
    info = json.loads((out / "population" / "anchor-00" / "training_info.json").read_text())
    assert {k: info["train_args"][k] for k in ("optimizer", "learning_rate", "weight_decay", "lr_scheduler_type")} == \
        {"optimizer": "sgd", "learning_rate": 0.1, "weight_decay": 5e-4, "lr_scheduler_type": "cosine"}
    for member in ("anchor-00", "anchor-01", "held-out-00"):
        assert (out / "population" / member / "preprocessor_config.json").is_file()
    # the star loads with the Auto class and pipeline (image processor saved beside it), predictions equal
    star = AutoModelForImageClassification.from_pretrained(out / "star").eval()
    clf = pipeline("image-classification", model=str(out / "star"))
    image = PILImage.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8))
    with torch.no_grad():
        probs = star(**clf.image_processor(images=[image], return_tensors="pt")).logits.softmax(-1)[0]
    best = clf(image, top_k=1)[0]
    assert best["label"] == star.config.id2label[int(probs.argmax())]
    assert best["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    # the BMA ships the model code: a fresh process without star_merge loads it (trust_remote_code), same logits
    from star_merge.bma import load_bma
    from star_merge.models import VISION_CODE

    shipped = {f for f in os.listdir(out / "bma") if f.endswith(".py")}
    assert shipped == {"configuration_star_bma.py", "modeling_star_bma.py", "builtin_vision_members.py", *VISION_CODE}

    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_bma(str(out / "bma"))(pixel_values=pixels).logits
    script = (_HIDE_STAR_MERGE + "import torch\nfrom transformers import AutoModelForImageClassification\n"
              f"m = AutoModelForImageClassification.from_pretrained({str(out / 'bma')!r}, trust_remote_code=True)\n"
              "x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))\n"
              "with torch.no_grad():\n    print(type(m).__module__, m.eval()(pixel_values=x).logits.tolist())\n")
    fresh = subprocess.run([sys.executable, "-c", script], env=dict(env, HF_MODULES_CACHE=str(tmp_path / "mods")),
                           capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    module, logits = fresh.stdout.strip().splitlines()[-1].split(" ", 1)
    assert module.startswith("transformers_modules")
    torch.testing.assert_close(torch.tensor(json.loads(logits)), expected, rtol=1e-5, atol=1e-5)

