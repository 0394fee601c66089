"""The built-in CIFAR architectures (star-cifar-resnet / -vgg / -wrn / -densenet) at small widths: proven as the
transformers families are (tests/test_adapters.py): random permutations leave the logits unchanged (relative
1e-5), more than half of the permuted weights move, weight matching recovers a permuted copy exactly. Plus the
negative control (a spec that gets one concatenated segment wrong changes the logits), loading through the
Auto classes and ``pipeline("image-classification")`` with the image processor saved beside the weights."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageClassification, pipeline

import star_merge as sm
from star_merge.errors import user_error_line
from star_merge.models import (
    StarCifarDenseNetConfig,
    StarCifarResNetConfig,
    StarCifarVGGConfig,
    StarCifarWRNConfig,
    image_processor_for,
)
from star_merge.spec import PermutationSpec, Segments
from test_adapters import randomise_, relative_error

SEEDS = (0, 1, 2)
CONFIGS = {
    "resnet18": lambda: StarCifarResNetConfig(depth=18, width=4, image_size=8),
    "resnet20": lambda: StarCifarResNetConfig(depth=20, width=4, image_size=8),
    "vgg11": lambda: StarCifarVGGConfig(depth=11, width=4, image_size=8),
    "vgg16": lambda: StarCifarVGGConfig(depth=16, width=2, image_size=8),
    "vgg19": lambda: StarCifarVGGConfig(depth=19, width=2, image_size=8),
    "wrn16-2": lambda: StarCifarWRNConfig(depth=16, widen_factor=2, base_width=2, image_size=8),
    "wrn10-1": lambda: StarCifarWRNConfig(depth=10, widen_factor=1, base_width=4, image_size=8),
    "densenet-bc-16": lambda: StarCifarDenseNetConfig(depth=16, growth_rate=3, image_size=8),
    "densenet-13": lambda: StarCifarDenseNetConfig(depth=13, growth_rate=3, bottleneck=False, image_size=8),
}


def inputs_for(config, n=4, seed=123):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, config.num_channels, config.image_size, config.image_size, generator=g)}


@dataclasses.dataclass
class Prepared:
    model: torch.nn.Module
    spec: PermutationSpec
    state_dict: dict
    inputs: dict
    logits: torch.Tensor


@functools.lru_cache(maxsize=None)
def prepared(case: str) -> Prepared:
    config = CONFIGS[case]()
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config)
    inputs = inputs_for(config)
    randomise_(model, inputs)
    model.eval()
    with torch.no_grad():
        logits = model(**inputs).logits.clone()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Prepared(model, sm.spec_for(model), sd, inputs, logits)


@torch.no_grad()
def logits_with(p: Prepared, sd) -> torch.Tensor:
    p.model.load_state_dict(sd)
    try:
        return p.model(**p.inputs).logits.clone()
    finally:
        p.model.load_state_dict(p.state_dict)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CONFIGS)
def test_permutation_preserves_logits(case, seed):
    p = prepared(case)
    permuted = sm.apply_permutation(p.spec, sm.random_permutation(p.spec, seed), p.state_dict)
    assert relative_error(logits_with(p, permuted), p.logits) < 1e-5


@pytest.mark.parametrize("case", CONFIGS)
def test_permutation_moves_most_weights(case):
    p = prepared(case)
    permuted = sm.apply_permutation(p.spec, sm.random_permutation(p.spec, 7), p.state_dict)
    moved = sum(int((permuted[k] != p.state_dict[k]).sum()) for k in p.spec.permuted_tensors)
    assert moved > 0.5 * p.spec.num_permuted_elements()


@pytest.mark.parametrize("case", CONFIGS)
def test_weight_matching_recovers_a_permuted_copy(case):
    p = prepared(case)
    perm = sm.random_permutation(p.spec, 11)
    permuted = sm.apply_permutation(p.spec, perm, p.state_dict)
    res = sm.weight_matching(p.spec, p.state_dict, permuted, seed=0)
    back = sm.apply_permutation(p.spec, res.perm, permuted)
    assert all(torch.equal(back[k], p.state_dict[k]) for k in p.state_dict)


def test_densenet_concatenated_segments_are_needed():
    """Negative control: the DenseNet spec with the segments of one layer's input swapped (same sizes, so the
    spec checks pass) no longer preserves the logits; the check above can fail."""
    p = prepared("densenet-13")
    name = "blocks.0.2.conv1.weight"  # reads [stem 16, layer 0 (3), layer 1 (3)]
    axes = dict(p.spec.axes_to_perm)
    entry = axes[name][1]
    first, l0, l1 = entry.parts
    wrong = Segments((first.perm, first.span), (l1.perm, l1.span), (l0.perm, l0.span))
    axes[name] = (axes[name][0], wrong, None, None)
    bad_spec = PermutationSpec(axes, p.spec.shapes)
    perm = sm.random_permutation(p.spec, 0)
    assert relative_error(logits_with(p, sm.apply_permutation(bad_spec, perm, p.state_dict)), p.logits) > 1e-3
    assert relative_error(logits_with(p, sm.apply_permutation(p.spec, perm, p.state_dict)), p.logits) < 1e-5


@pytest.mark.parametrize("case", ["resnet20", "wrn16-2", "densenet-bc-16"])
def test_activation_matching_recovers_a_permuted_copy(case):
    p = prepared(case)
    copy = AutoModelForImageClassification.from_config(p.model.config).eval()
    copy.load_state_dict(sm.apply_permutation(p.spec, sm.random_permutation(p.spec, 3), p.state_dict))
    loader = [inputs_for(p.model.config, 16, seed=s) for s in range(3)]
    res = sm.activation_matching(p.spec, p.model, copy, loader, progress=False)
    back = sm.apply_permutation(p.spec, res.perm, copy.state_dict())
    assert all(torch.equal(back[k], p.state_dict[k]) for k in p.state_dict)


@pytest.mark.parametrize("case", ["resnet18", "densenet-bc-16"])
def test_saved_folder_loads_with_auto_classes_and_pipeline(case, tmp_path):
    from PIL import Image

    p = prepared(case)
    p.model.save_pretrained(tmp_path)
    processor = image_processor_for(p.model.config)
    processor.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(p.model)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)) for _ in range(3)]
    clf = pipeline("image-classification", model=str(tmp_path))
    with torch.no_grad():
        direct = loaded(**processor(images=images, return_tensors="pt")).logits.softmax(-1)
    for image, probs in zip(images, direct):
        got = {d["label"]: d["score"] for d in clf(image, top_k=loaded.config.num_labels)}
        want = {loaded.config.id2label[i]: float(v) for i, v in enumerate(probs)}
        assert got.keys() == want.keys()
        assert all(abs(got[k] - want[k]) < 1e-5 for k in want)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (3, 3, 8, 8)
    manual = torch.stack([torch.from_numpy(np.asarray(im.resize((8, 8), Image.BILINEAR), dtype=np.float32))
                          for im in images]).permute(0, 3, 1, 2) / 255
    mean, std = torch.tensor(p.model.config.image_mean), torch.tensor(p.model.config.image_std)
    assert torch.allclose(pixels, (manual - mean[:, None, None]) / std[:, None, None], atol=0.05)


@pytest.mark.parametrize("build, message", [
    (lambda: StarCifarResNetConfig(depth=19), "depth must be 18, 34 or 6n\\+2"),
    (lambda: StarCifarVGGConfig(depth=12), "depth must be one of"),
    (lambda: StarCifarWRNConfig(depth=21), "6n\\+4"),
    (lambda: StarCifarDenseNetConfig(depth=41), "6n\\+4"),
    (lambda: StarCifarDenseNetConfig(compression=0), "compression"),
    (lambda: StarCifarResNetConfig(image_mean=[0.5]), "one value per channel"),
])
def test_bad_configs_are_user_errors(build, message):
    with pytest.raises(ValueError, match=message) as e:
        build()
    assert user_error_line(e.value) is not None
