"""timm transformer-style families: ViT / DeiT (``VisionTransformer``, distilled DeiT) and ConvNeXt.

ViT: the patch embedding writes the residual stream ``residual``; the class, register and distillation tokens
and the position embeddings live in it. Each block has its heads ``blocks.{i}.heads`` (whole heads of the fused
q/k/v projection, ``repeat=3``) and MLP units ``blocks.{i}.mlp``; LayerNorms and layer scales follow the stream;
per-head q/k norms are shared by all heads and stay. The number of heads comes from the meta-built timm model.

ConvNeXt: the patch stem opens ``stages.0``; each later stage's downsample (LayerNorm on the previous stream, 2x2
convolution) opens ``stages.{s}``; a block's depthwise convolution, LayerNorm and layer scale follow the stream,
its MLP units are ``stages.{s}.blocks.{j}.mlp`` (GRN parameters included); the head's norm follows the last
stream, its optional pre-logits layer gets ``head.pre_logits``.
"""

from __future__ import annotations

import re

from ..spec import AxisPerm, SpecError
from .layout import heads_axis
from .timm_wrapper import meta_timm_model, register_timm_family

__all__ = ["vit_axes", "convnext_axes"]


def _indices(axes, pattern: str) -> list[int]:
    rx = re.compile(re.escape(axes.prefix) + pattern)
    return sorted({int(m.group(1)) for k in axes.shapes for m in [rx.match(k)] if m})


def _linear_or_conv1x1(axes, name: str, out, in_) -> None:
    """A Linear layer, or the 1x1 convolution timm uses in its place (``conv_mlp``)."""
    if len(axes.shape(f"{name}.weight")) == 4:
        axes.conv(name, out, in_)
    else:
        axes.linear(name, out, in_)


def _vit_block(axes, i: int, res, heads, head_dim: int) -> None:
    b = f"blocks.{i}"
    mlp = f"{b}.mlp"
    axes.norm(f"{b}.norm1", res)
    if not axes.has(f"{b}.attn.qkv.weight"):
        raise SpecError(f"{axes.prefix}{b}.attn has no fused qkv projection; this ViT variant is not supported")
    qkv = AxisPerm(heads.perm, block=heads.block, repeat=3) if heads is not None else None
    axes.linear(f"{b}.attn.qkv", qkv, res)
    for norm in ("q_norm", "k_norm"):  # LayerNorm over head_dim, the same for every head
        if axes.has(f"{b}.attn.{norm}.weight"):
            axes.norm(f"{b}.attn.{norm}", None)
    if axes.has(f"{b}.attn.norm.weight"):
        axes.norm(f"{b}.attn.norm", heads)
    axes.linear(f"{b}.attn.proj", res, heads)
    axes.add_if_present(f"{b}.ls1.gamma", res)
    axes.norm(f"{b}.norm2", res)
    axes.linear(f"{b}.mlp.fc1", mlp, res)
    if axes.has(f"{b}.mlp.norm.weight"):
        axes.norm(f"{b}.mlp.norm", mlp)
    axes.linear(f"{b}.mlp.fc2", res, mlp)
    axes.add_if_present(f"{b}.ls2.gamma", res)


def vit_axes(config, axes, *, permute_residual: bool = True, permute_heads: bool = True) -> None:
    """timm ``VisionTransformer`` (ViT, DeiT, DeiT distilled)."""
    model = meta_timm_model(config)
    res = "residual" if permute_residual else None
    for token in ("cls_token", "reg_token", "dist_token", "pos_embed"):
        axes.add_if_present(token, None, None, res)
    axes.conv("patch_embed.proj", res, None)
    for norm in ("patch_embed.norm", "norm_pre", "norm", "fc_norm"):
        if axes.has(f"{norm}.weight"):
            axes.norm(norm, res)
    for i in _indices(axes, r"blocks\.(\d+)\."):
        attn = model.blocks[i].attn
        head_dim = attn.head_dim
        heads = heads_axis(f"blocks.{i}.heads", head_dim, permute_heads)
        if heads is not None and attn.num_heads * head_dim != axes.shape(f"blocks.{i}.attn.proj.weight")[1]:
            raise SpecError(f"{axes.prefix}blocks.{i}.attn: heads do not tile the attention width")
        _vit_block(axes, i, res, heads, head_dim)
    for head in ("head", "head_dist"):
        if axes.has(f"{head}.weight"):
            axes.linear(head, None, res)


def _convnext_block(axes, b: str, stream) -> None:
    mlp = f"{b}.mlp"
    axes.conv(f"{b}.conv_dw", stream, None)  # depthwise: one filter per channel
    axes.norm(f"{b}.norm", stream)
    _linear_or_conv1x1(axes, f"{b}.mlp.fc1", mlp, stream)
    for name in ("grn.weight", "grn.bias"):  # GRN (ConvNeXt-V2): per hidden unit
        if axes.has(f"{b}.mlp.{name}"):
            axes.add(f"{b}.mlp.{name}", *([None] * (len(axes.shape(f'{b}.mlp.{name}')) - 1)), mlp)
    _linear_or_conv1x1(axes, f"{b}.mlp.fc2", stream, mlp)
    axes.add_if_present(f"{b}.gamma", stream)


def convnext_axes(config, axes, *, permute_residual: bool = True) -> None:
    """timm ``ConvNeXt`` with the patch stem (``stem.0`` convolution + LayerNorm)."""
    if axes.has("stem.2.weight") or axes.has("stem.3.weight"):
        raise SpecError(f"{axes.prefix}stem: only ConvNeXt's patch stem is supported, not an overlapping stem")
    stream = "stages.0" if permute_residual else None
    axes.conv("stem.0", stream, None)
    axes.norm("stem.1", stream)
    for s in _indices(axes, r"stages\.(\d+)\."):
        if axes.has(f"stages.{s}.downsample.1.weight"):
            new = f"stages.{s}" if permute_residual else None
            axes.norm(f"stages.{s}.downsample.0", stream)
            axes.conv(f"stages.{s}.downsample.1", new, stream)
            stream = new
        for j in _indices(axes, rf"stages\.{s}\.blocks\.(\d+)\."):
            _convnext_block(axes, f"stages.{s}.blocks.{j}", stream)
    if axes.has("norm_pre.weight"):
        axes.norm("norm_pre", stream)
    if axes.has("head.norm.weight"):
        axes.norm("head.norm", stream)
    if axes.has("head.pre_logits.fc.weight"):
        axes.linear("head.pre_logits.fc", "head.pre_logits", stream)
        stream = "head.pre_logits"
    if axes.has("head.fc.weight"):
        axes.linear("head.fc", None, stream)


register_timm_family("vit", r"(vit|deit|deit3)_\w+", vit_axes)
register_timm_family("convnext", r"convnext(v2)?_\w+", convnext_axes)
