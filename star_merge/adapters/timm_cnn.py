"""timm convolutional families: ResNet (basic and bottleneck blocks, deep stems, wide variants, SE), VGG-BN and
DenseNet.

ResNet (``resnet18``, ``resnet50d``, ``wide_resnet50_2``, ``seresnet50`` …): the stem (one 7x7 convolution, or a
deep stem of three 3x3 convolutions whose first two get their own permutations ``stem.0`` / ``stem.1``) opens the
residual stream ``stem``; every block with an identity shortcut shares its stream, a block with a ``downsample``
(1x1 convolution, after an average pool in the ``d`` variants) opens ``layer{s}.{j}.residual``. Inside a block the
outputs of every convolution but the last get ``layer{s}.{j}.conv{k}``; a squeeze-excitation gate's hidden units
``layer{s}.{j}.se``. VGG (``vgg11_bn`` …): each feature convolution ``features.{i}`` and the two convolutions of
the pre-logits MLP (``pre_logits.fc1`` / ``fc2``) get their own permutation; the classifier keeps its outputs.
DenseNet (``densenet121`` … ``densenet264d``): the stem's output ``stem`` (a deep stem's first two convolutions
``stem.0`` / ``stem.1``), each dense layer's bottleneck ``….denselayer{i}.bottleneck`` and its ``growth_rate`` new
channels ``….denselayer{i}``, each transition's output ``transition{b}``; a layer reads the concatenation of its
block's input and every earlier layer's output, declared as :class:`~star_merge.spec.Segments` (the blurred
``densenetblur`` variants are not covered). BatchNorm affine parameters and running statistics follow their channels.
"""

from __future__ import annotations

import re

from ..spec import Segments, SpecError
from .timm_wrapper import check_ungrouped, register_timm_family

__all__ = ["densenet_axes", "resnet_axes", "vgg_axes"]


def _numbered(axes, head: str) -> list[int]:
    """The sorted numbers ``n`` of the modules ``{head}{n}.…`` present (``layer`` -> ResNet's stages)."""
    pattern = re.compile(rf"{re.escape(axes.prefix + head)}(\d+)\.")
    return sorted({int(m.group(1)) for k in axes.shapes for m in [pattern.match(k)] if m})


def _conv_bn(axes, conv: str, bn: str, out, in_) -> int:
    """A convolution and its BatchNorm; returns the number of output channels."""
    axes.conv(conv, out, in_)
    if not axes.has(f"{bn}.running_mean"):  # GroupNorm / LayerNorm tie channels in groups: not permutable
        raise SpecError(f"{axes.prefix}{bn} is not a BatchNorm; the {axes.model_type!r} adapter needs BatchNorm")
    axes.batchnorm(bn, out)
    return axes.shape(f"{conv}.weight")[0]


def _resnet_stem(axes, stream) -> tuple[object, int]:
    if axes.has("conv1.0.weight"):  # deep stem: conv-bn-act, conv-bn-act, conv (then bn1)
        c = _conv_bn(axes, "conv1.0", "conv1.1", "stem.0", None)
        check_ungrouped(axes, "conv1.3", c)
        c = _conv_bn(axes, "conv1.3", "conv1.4", "stem.1", "stem.0")
        check_ungrouped(axes, "conv1.6", c)
        axes.conv("conv1.6", stream, "stem.1")
    else:
        axes.conv("conv1", stream, None)
    axes.batchnorm("bn1", stream)
    channels = axes.shape("bn1.weight")[0]
    if axes.has("maxpool.0.weight"):  # replace_stem_pool: a strided conv-bn-act instead of the max pool
        if not axes.has("maxpool.1.running_mean"):
            raise SpecError(f"{axes.prefix}maxpool: an anti-aliased stem pool is not supported")
        pool = "stem.pool" if stream is not None else None
        check_ungrouped(axes, "maxpool.0", channels)
        channels = _conv_bn(axes, "maxpool.0", "maxpool.1", pool, stream)
        stream = pool
    return stream, channels


def _resnet_block(axes, block: str, block_in, channels: int, stream_name) -> tuple[object, int]:
    """One residual block reading stream ``block_in``; returns (its output stream, its output channels)."""
    current = block_in
    if axes.has(f"{block}.downsample.0.weight") or axes.has(f"{block}.downsample.1.weight"):
        k = 0 if axes.has(f"{block}.downsample.0.weight") else 1  # ``d`` variants: AvgPool2d first
        current = stream_name
        _conv_bn(axes, f"{block}.downsample.{k}", f"{block}.downsample.{k + 1}", current, block_in)
    convs = 3 if axes.has(f"{block}.conv3.weight") else 2
    prev, size = block_in, channels
    for k in range(1, convs + 1):
        out = current if k == convs else f"{block}.conv{k}"
        check_ungrouped(axes, f"{block}.conv{k}", size)
        size = _conv_bn(axes, f"{block}.conv{k}", f"{block}.bn{k}", out, prev)
        prev = out
    if axes.has(f"{block}.se.fc1.weight"):  # squeeze-excitation: a per-channel gate on the block's output
        se = f"{block}.se" if current is not None else None
        axes.conv(f"{block}.se.fc1", se, current)
        axes.batchnorm(f"{block}.se.bn", se)
        axes.conv(f"{block}.se.fc2", current, se)
    return current, size


def resnet_axes(config, axes, *, permute_residual: bool = True) -> None:
    """timm ``ResNet``: stem, ``layer1``…``layer4`` of basic or bottleneck blocks, ``fc``."""
    current, channels = _resnet_stem(axes, "stem" if permute_residual else None)
    for s in _numbered(axes, "layer"):
        for j in _numbered(axes, f"layer{s}."):
            block = f"layer{s}.{j}"
            residual = f"{block}.residual" if permute_residual else None
            current, channels = _resnet_block(axes, block, current, channels, residual)
    if axes.has("fc.weight"):
        axes.linear("fc", None, current)


def vgg_axes(config, axes) -> None:
    """timm ``VGG``: ``features`` (conv [+ BatchNorm] per entry of the config), ``pre_logits`` MLP, ``head.fc``."""
    convs = sorted(int(m.group(1)) for k, s in axes.shapes.items()
                   for m in [re.fullmatch(rf"{re.escape(axes.prefix)}features\.(\d+)\.weight", k)] if m and len(s) == 4)
    prev = None
    for i in convs:
        out = f"features.{i}"
        axes.conv(out, out, prev)
        axes.batchnorm(f"features.{i + 1}", out)
        prev = out
    if axes.has("pre_logits.fc1.weight"):
        axes.conv("pre_logits.fc1", "pre_logits.fc1", prev)
        axes.conv("pre_logits.fc2", "pre_logits.fc2", "pre_logits.fc1")
        prev = "pre_logits.fc2"
    if axes.has("head.fc.weight"):
        axes.linear("head.fc", None, prev)


def _densenet_stem(axes) -> tuple[str, int]:
    if axes.has("features.conv1.weight"):  # deep stem: three 3x3 conv-bn-act
        c = _conv_bn(axes, "features.conv0", "features.norm0", "stem.0", None)
        check_ungrouped(axes, "features.conv1", c)
        c = _conv_bn(axes, "features.conv1", "features.norm1", "stem.1", "stem.0")
        check_ungrouped(axes, "features.conv2", c)
        return "stem", _conv_bn(axes, "features.conv2", "features.norm2", "stem", "stem.1")
    return "stem", _conv_bn(axes, "features.conv0", "features.norm0", "stem", None)


def densenet_axes(config, axes) -> None:
    """timm ``DenseNet``: stem, ``features.denseblock{b}`` of bottleneck dense layers, ``features.transition{b}``,
    ``features.norm5``, ``classifier``; every layer reads its block's concatenated features."""
    source, channels = _densenet_stem(axes)
    for b in _numbered(axes, "features.denseblock"):
        parts = [(source, channels)]
        for i in _numbered(axes, f"features.denseblock{b}.denselayer"):
            layer = f"features.denseblock{b}.denselayer{i}"
            features = Segments(*parts)
            check_ungrouped(axes, f"{layer}.conv1", sum(span for _, span in parts))
            axes.batchnorm(f"{layer}.norm1", features)
            width = _conv_bn(axes, f"{layer}.conv1", f"{layer}.norm2", f"{layer}.bottleneck", features)
            check_ungrouped(axes, f"{layer}.conv2", width)
            axes.conv(f"{layer}.conv2", layer, f"{layer}.bottleneck")
            parts.append((layer, axes.shape(f"{layer}.conv2.weight")[0]))
        features = Segments(*parts)
        transition = f"features.transition{b}"
        if axes.has(f"{transition}.conv.weight"):
            if any(k.startswith(f"{axes.prefix}{transition}.pool.") for k in axes.shapes):
                raise SpecError(f"{axes.prefix}{transition}.pool: an anti-aliased transition is not supported")
            axes.batchnorm(f"{transition}.norm", features)
            axes.conv(f"{transition}.conv", f"transition{b}", features)
            source, channels = f"transition{b}", axes.shape(f"{transition}.conv.weight")[0]
    axes.batchnorm("features.norm5", features)
    if axes.has("classifier.weight"):
        axes.linear("classifier", None, features)


register_timm_family("resnet", r"(wide_|se)?res(net|next)\d+[a-z]?(_\w+)?", resnet_axes)
register_timm_family("vgg", r"vgg\d+(_bn)?", vgg_axes)
register_timm_family("densenet", r"densenet\d+d?", densenet_axes)
