"""Adapters for the built-in CIFAR image classifiers: ``star-cifar-resnet``, ``-vgg``, ``-wrn``, ``-densenet``.

ResNet and WRN: a residual stream permutation starts at the stem and is shared by every block whose shortcut
is the identity; a block with a projection shortcut starts a new one (``stages.{s}.{j}.residual``); each
block's inner convolution has its own (``stages.{s}.{j}.conv1``). VGG: one permutation per convolution
(``conv_{i}``). DenseNet: every layer's new features (``blocks.{b}.{l}``, and its bottleneck
``blocks.{b}.{l}.bottleneck``), the stem and each transition have their own permutation, and the features a
layer reads are their concatenation, a :class:`~star_merge.spec.Segments` axis
[block input, layer 0, ..., layer l-1]. The permutation names are the models' ``activation_sites`` keys.
"""

from __future__ import annotations

from ..spec import PermutationSpec, Segments
from .heads import declare_heads
from .layout import AxesCollector
from .registry import register_adapter

__all__ = ["build_cifar_resnet_spec", "build_cifar_vgg_spec", "build_cifar_wrn_spec", "build_cifar_densenet_spec"]


@register_adapter("star-cifar-resnet")
def build_cifar_resnet_spec(config, shapes, **options) -> PermutationSpec:
    axes = AxesCollector("star-cifar-resnet", shapes)
    stream = "stem"
    axes.conv("stem.0", stream, None)
    axes.batchnorm("stem.1", stream)
    for s, (n, _) in enumerate(config.stages):
        for j in range(n):
            block, block_in = f"stages.{s}.{j}", stream
            if axes.has(f"{block}.shortcut.0.weight"):
                stream = f"{block}.residual"
                axes.conv(f"{block}.shortcut.0", stream, block_in)
                axes.batchnorm(f"{block}.shortcut.1", stream)
            axes.conv(f"{block}.conv1", f"{block}.conv1", block_in)
            axes.batchnorm(f"{block}.bn1", f"{block}.conv1")
            axes.conv(f"{block}.conv2", stream, f"{block}.conv1")
            axes.batchnorm(f"{block}.bn2", stream)
    axes.linear("classifier", None, stream)
    return axes.build()


@register_adapter("star-cifar-vgg")
def build_cifar_vgg_spec(config, shapes, **options) -> PermutationSpec:
    axes = AxesCollector("star-cifar-vgg", shapes)
    prev, i, index = None, 0, 0
    for stage in config.conv_widths:
        for _ in stage:
            p = f"conv_{i}"
            axes.conv(f"features.{index}", p, prev)
            axes.batchnorm(f"features.{index + 1}", p)
            prev, i, index = p, i + 1, index + 3
        index += 1  # the stage's max-pool
    axes.linear("classifier", None, prev)
    return axes.build()


@register_adapter("star-cifar-wrn")
def build_cifar_wrn_spec(config, shapes, **options) -> PermutationSpec:
    axes = AxesCollector("star-cifar-wrn", shapes)
    stream = "stem"
    axes.conv("stem", stream, None)
    for s, (n, _) in enumerate(config.stages):
        for j in range(n):
            block, block_in = f"stages.{s}.{j}", stream
            axes.batchnorm(f"{block}.bn1", block_in)  # pre-activation: normalises the stream it reads
            if axes.has(f"{block}.shortcut.weight"):
                stream = f"{block}.residual"
                axes.conv(f"{block}.shortcut", stream, block_in)
            axes.conv(f"{block}.conv1", f"{block}.conv1", block_in)
            axes.batchnorm(f"{block}.bn2", f"{block}.conv1")
            axes.conv(f"{block}.conv2", stream, f"{block}.conv1")
    axes.batchnorm("norm", stream)
    axes.linear("classifier", None, stream)
    return axes.build()


@register_adapter("star-cifar-densenet")
def build_cifar_densenet_spec(config, shapes, **options) -> PermutationSpec:
    axes = AxesCollector("star-cifar-densenet", shapes)
    k, inputs = config.growth_rate, config.block_inputs()
    source = "stem"
    axes.conv("stem", source, None)
    for b in range(3):
        parts = [(source, inputs[b])]
        for i in range(config.layers_per_block):
            layer, features = f"blocks.{b}.{i}", Segments(*parts)
            axes.batchnorm(f"{layer}.bn1", features)
            if config.bottleneck:
                axes.conv(f"{layer}.conv1", f"{layer}.bottleneck", features)
                axes.batchnorm(f"{layer}.bn2", f"{layer}.bottleneck")
                axes.conv(f"{layer}.conv2", layer, f"{layer}.bottleneck")
            else:
                axes.conv(f"{layer}.conv1", layer, features)
            parts.append((layer, k))
        features = Segments(*parts)
        if b < 2:
            source = f"transition{b}"
            axes.batchnorm(f"transitions.{b}.bn", features)
            axes.conv(f"transitions.{b}.conv", source, features)
    axes.batchnorm("norm", features)
    axes.linear("classifier", None, features)
    return axes.build()


declare_heads("star-cifar-resnet", "StarCifarResNetForImageClassification")
declare_heads("star-cifar-vgg", "StarCifarVGGForImageClassification")
declare_heads("star-cifar-wrn", "StarCifarWRNForImageClassification")
declare_heads("star-cifar-densenet", "StarCifarDenseNetForImageClassification")
