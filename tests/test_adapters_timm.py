"""timm families in transformers (``TimmWrapperForImageClassification``): the adapters proven as the others are.

Every case is a tiny timm architecture built with kwargs (``model_args``), weights and BatchNorm statistics
randomised, in float64; for three random permutations the logits do not change (relative 1e-5), more than half of the
permuted weights move, and weight matching recovers the original exactly. Negative controls: a spec with one
axis wrong changes the logits; grouped convolutions and unknown architectures are refused. Needs the [vision]
extra (``make test-vision``).
"""

from __future__ import annotations

import functools

import pytest
import torch

timm = pytest.importorskip("timm", reason="timm is not installed: the [vision] extra runs in `make test-vision`")

from test_adapters import randomise_, relative_error  # noqa: E402
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification  # noqa: E402

from star_merge import apply_permutation, random_permutation, spec_for, weight_matching  # noqa: E402
from star_merge.spec import PermutationSpec, SpecError  # noqa: E402

pytestmark = pytest.mark.vision

SEEDS = (0, 1, 2)
RTOL = 1e-5
_VIT = dict(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=3, mlp_ratio=1.5)
_CONVNEXT = dict(dims=(8, 12, 16, 20), depths=(2, 1, 1, 1))
CASES = {
    # ResNet: basic blocks (identity and projection shortcuts), bottlenecks, deep / tiered stems with
    # average-pool downsampling, a wide variant, squeeze-excitation.
    "resnet18": ("resnet18", dict(layers=(2, 1, 1, 1), channels=(8, 12, 8, 10)), 32),
    "resnet50": ("resnet50", dict(layers=(2, 1, 1, 1), channels=(4, 6, 4, 5)), 32),
    "resnet50d": ("resnet50d", dict(layers=(1, 2, 1, 1), channels=(4, 6, 4, 5), stem_width=8), 32),
    "resnet10t": ("resnet10t", dict(layers=(1, 1, 1, 1), channels=(4, 6, 8, 10), stem_width=8), 32),
    "wide_resnet50_2": ("wide_resnet50_2", dict(layers=(1, 1, 1, 1), channels=(4, 6, 4, 5)), 32),
    "seresnet50": ("seresnet50", dict(layers=(1, 1, 1, 1), channels=(4, 6, 4, 5)), 32),
    # VGG-BN (the paper's VGG-11 / 19 in timm), with a narrow pre-logits MLP.
    "vgg11_bn": ("vgg11_bn", dict(mlp_ratio=1 / 256), 32),
    # DenseNet-BC: concatenated inputs (Segments) through bottleneck layers and transitions; a deep stem.
    "densenet121": ("densenet121", dict(growth_rate=4, block_config=(3, 2), bn_size=2), 32),
    "densenet264d": ("densenet264d", dict(growth_rate=4, block_config=(2, 1, 2), bn_size=2), 32),
    # ViT / DeiT: plain, layer scale + q/k norm, distilled (two tokens, two heads).
    "vit_tiny": ("vit_tiny_patch16_224", dict(_VIT), 16),
    "vit_ls_qknorm": ("vit_tiny_patch16_224", dict(_VIT, init_values=0.5, qk_norm=True, qkv_bias=False), 16),
    "deit_tiny_distilled": ("deit_tiny_distilled_patch16_224", dict(_VIT), 16),
    # ConvNeXt: linear and 1x1-convolution MLPs, V2 with GRN, a pre-logits head.
    "convnext_atto": ("convnext_atto", dict(_CONVNEXT), 32),
    "convnext_conv_mlp": ("convnext_atto", dict(_CONVNEXT, conv_mlp=True, head_hidden_size=10), 32),
    "convnextv2_atto": ("convnextv2_atto", dict(_CONVNEXT), 32),
}
SLOW = {"vgg11_bn"}  # VGG-11's fixed widths (up to 512 channels): weight matching on one seed only


def tiny_timm(architecture: str, model_args: dict, num_labels: int = 3) -> TimmWrapperForImageClassification:
    config = TimmWrapperConfig(architecture=architecture, model_args=model_args, num_labels=num_labels)
    return TimmWrapperForImageClassification(config)


@functools.cache
def prepared(case_id: str):
    arch, model_args, size = CASES[case_id]
    torch.manual_seed(0)
    model = tiny_timm(arch, model_args).eval().double()  # float64: VGG's float32 sums round at ~1e-5
    g = torch.Generator().manual_seed(1)
    inputs = {"pixel_values": torch.randn(4, 3, size, size, generator=g, dtype=torch.float64)}
    randomise_(model, inputs)
    spec = spec_for(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        reference = model(**inputs).logits
    assert relative_error(reference[0], reference[1]) > 1e-3, f"{case_id}: logits do not depend on the input"
    return model, spec, sd, inputs, reference


def logits_with(model, sd, inputs, original):
    try:
        model.load_state_dict(sd)
        with torch.no_grad():
            return model(**inputs).logits
    finally:
        model.load_state_dict(original)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_timm_permutation_preserves_logits(case_id, seed):
    model, spec, sd, inputs, reference = prepared(case_id)
    got = logits_with(model, apply_permutation(spec, random_permutation(spec, seed), sd), inputs, sd)
    assert relative_error(got, reference) < RTOL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", sorted(CASES))
def test_timm_permutation_moves_most_weights(case_id, seed):
    _, spec, sd, _, _ = prepared(case_id)
    permuted = apply_permutation(spec, random_permutation(spec, seed), sd)
    moved = sum(int((permuted[k] != sd[k]).sum()) for k in spec.permuted_tensors)
    assert moved > 0.5 * spec.num_permuted_elements()


@pytest.mark.parametrize(("case_id", "seed"), [(c, s) for c in sorted(CASES) for s in SEEDS if c not in SLOW or s == 0])
def test_timm_weight_matching_recovers_the_original(case_id, seed):
    _, spec, sd, _, _ = prepared(case_id)
    permuted = apply_permutation(spec, random_permutation(spec, seed), sd)
    res = weight_matching(spec, sd, permuted, seed=seed)
    recovered = apply_permutation(spec, res.perm, permuted)
    assert all(torch.equal(recovered[k], sd[k]) for k in sd)


# ---------------------------------------------------------------------- structure and negative controls
def test_timm_resnet_streams_follow_shortcuts():
    _, spec, _, _, _ = prepared("resnet50d")
    perm_of = lambda k: spec.axes_to_perm[f"timm_model.{k}"][0].perm  # noqa: E731
    assert perm_of("conv1.0.weight") == "stem.0" and perm_of("conv1.6.weight") == "stem"
    assert perm_of("layer1.0.bn3.running_mean") == "stem"  # deep stem 2 * 8 = 4 * 4 channels: identity shortcut
    assert perm_of("layer2.0.downsample.1.weight") == "layer2.0.residual"  # after the average pool
    assert perm_of("layer2.1.bn3.weight") == "layer2.0.residual"  # identity shortcut: the stream continues
    assert spec.axes_to_perm["timm_model.fc.weight"][0] is None


def test_timm_densenet_layers_read_their_blocks_concatenation():
    from star_merge.spec import Segments

    _, spec, _, _, _ = prepared("densenet264d")
    entry = lambda k, axis: spec.axes_to_perm[f"timm_model.features.{k}"][axis]  # noqa: E731
    assert entry("conv0.weight", 0).perm == "stem.0" and entry("conv2.weight", 0).perm == "stem"  # deep stem
    third = entry("denseblock1.denselayer2.conv1.weight", 1)  # stem (2k = 8) + layer 1 (k = 4) channels
    assert isinstance(third, Segments)
    assert [(p.perm, p.offset, p.span) for p in third.parts] == [("stem", 0, 8),
                                                                 ("features.denseblock1.denselayer1", 8, 4)]
    assert entry("transition1.conv.weight", 0).perm == "transition1"
    assert spec.axes_to_perm["timm_model.classifier.weight"][0] is None


@pytest.mark.parametrize("case_id", ["resnet18", "vit_tiny", "convnext_atto", "vgg11_bn", "densenet121"])
def test_a_wrong_axis_breaks_invariance(case_id):
    """Negative control: the same check with one tensor's permutation dropped must fail."""
    model, spec, sd, inputs, reference = prepared(case_id)
    victim = next(k for k in reversed(list(spec.axes_to_perm)) if any(spec.axes_to_perm[k][1:]))  # an input axis
    axes = dict(spec.axes_to_perm)
    axes[victim] = (axes[victim][0], None, *axes[victim][2:])
    broken = PermutationSpec(axes, spec.shapes)
    got = logits_with(model, apply_permutation(broken, random_permutation(broken, 0), sd), inputs, sd)
    assert relative_error(got, reference) > 1e-3, victim


def test_the_declared_timm_head_is_the_one_proven_here():
    from star_merge.adapters.heads import supported_heads

    assert supported_heads("timm_wrapper") == (TimmWrapperForImageClassification.__name__,)
    assert all(type(prepared(c)[0]) is TimmWrapperForImageClassification for c in ("resnet18", "vit_tiny"))


def test_unsupported_timm_models_are_refused():
    with torch.device("meta"):
        resnext = tiny_timm("resnext50_32x4d", dict(layers=(1, 1, 1, 1), channels=(32, 32, 32, 32)))
        efficientnet = tiny_timm("efficientnet_b0", {})
    with pytest.raises(SpecError, match="grouped convolution"):
        spec_for(resnext)
    with pytest.raises(SpecError, match="no timm family adapter for architecture 'efficientnet_b0'"):
        spec_for(efficientnet)
