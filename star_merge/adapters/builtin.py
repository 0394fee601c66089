"""Adapters for the built-in ``star-mlp`` and ``star-cnn1d`` models."""

from __future__ import annotations

from ..spec import AxisPerm, PermutationSpec
from .heads import declare_heads
from .registry import register_adapter


@register_adapter("star-mlp")
def build_star_mlp_spec(config, shapes, **options) -> PermutationSpec:
    axes = {}
    prev = None
    for i in range(len(config.hidden_sizes)):
        p = f"hidden_{i}"
        axes[f"layers.{i}.weight"] = (p, prev)
        axes[f"layers.{i}.bias"] = (p,)
        prev = p
    axes["classifier.weight"] = (None, prev)
    axes["classifier.bias"] = (None,)
    return PermutationSpec.from_axes(axes, shapes)


@register_adapter("star-cnn1d")
def build_star_cnn1d_spec(config, shapes, **options) -> PermutationSpec:
    axes = {}
    prev = None
    for i in range(len(config.channels)):
        p = f"conv_{i}"
        axes[f"convs.{i}.weight"] = (p, prev, None)
        for buf in ("weight", "bias", "running_mean", "running_var"):
            axes[f"norms.{i}.{buf}"] = (p,)
        axes[f"norms.{i}.num_batches_tracked"] = ()
        prev = p
    axes["classifier.weight"] = (None, AxisPerm(prev, block=config.feature_length))
    axes["classifier.bias"] = (None,)
    return PermutationSpec.from_axes(axes, shapes)


declare_heads("star-mlp", "StarMLPForClassification")
declare_heads("star-cnn1d", "StarCNN1dForClassification")
