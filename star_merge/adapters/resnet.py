"""Adapter for ResNet (``ResNetModel``, ``ResNetForImageClassification``; basic and bottleneck blocks).

A residual stream permutation starts at the stem (``embedder``) and is shared by every block whose
shortcut is the identity; a block with a projection shortcut (1x1 convolution + BatchNorm) starts a new
one (``stages.{s}.residual``, or ``stages.{s}.layers.{j}.residual`` past a stage's first block). Inside a
block, the outputs of every convolution but the last get their own permutation
(``stages.{s}.layers.{j}.conv{k}``). BatchNorm affine parameters and running statistics follow their
channels. A base model's outputs come out in the order of the last stream permutation.
"""

from __future__ import annotations

from ..spec import PermutationSpec
from .heads import declare_heads
from .layout import AxesCollector, find_prefix
from .registry import register_adapter

__all__ = ["build_resnet_spec"]


@register_adapter("resnet")
def build_resnet_spec(config, shapes, *, permute_residual: bool = True) -> PermutationSpec:
    """Permutation spec of a ResNet base model or image classifier."""
    axes = AxesCollector(
        "resnet", shapes, find_prefix(shapes, "embedder.embedder.convolution.weight", "resnet")
    )
    convs_per_block = 3 if config.layer_type == "bottleneck" else 2

    def stream(name: str) -> str | None:
        return name if permute_residual else None

    def conv_bn(name: str, out, in_) -> None:
        axes.conv(f"{name}.convolution", out, in_)
        axes.batchnorm(f"{name}.normalization", out)

    current = stream("embedder")
    conv_bn("embedder.embedder", current, None)
    for s, depth in enumerate(config.depths):
        for j in range(depth):
            block = f"encoder.stages.{s}.layers.{j}"
            block_in = current
            if axes.has(f"{block}.shortcut.convolution.weight"):
                current = stream(f"stages.{s}.residual" if j == 0 else f"stages.{s}.layers.{j}.residual")
                conv_bn(f"{block}.shortcut", current, block_in)
            prev = block_in
            for k in range(convs_per_block):
                out = current if k == convs_per_block - 1 else f"stages.{s}.layers.{j}.conv{k}"
                conv_bn(f"{block}.layer.{k}", out, prev)
                prev = out
    # ``classifier.0`` is a Flatten; ``classifier.1`` the linear layer on pooled channels.
    if axes.has("classifier.1.weight", absolute=True):
        axes.linear("classifier.1", None, current, absolute=True)
    return axes.build()


declare_heads("resnet", "ResNetModel", "ResNetForImageClassification")
