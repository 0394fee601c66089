"""Adapter for the Vision Transformer (``ViTModel``, ``ViTForImageClassification``).

The patch-embedding convolution writes the residual stream; the class token and the position embeddings
live in it. Permutations: ``residual``, ``layers.{i}.heads`` (whole heads), ``layers.{i}.mlp``.
A base model's pooler output is a model output and keeps its order.
"""

from __future__ import annotations

from ..spec import PermutationSpec
from .folding import pre_norm_plan, register_folding
from .heads import declare_heads
from .layout import find_prefix, heads_axis, stream_collector
from .registry import register_adapter

__all__ = ["build_vit_spec", "vit_folding"]


@register_adapter("vit")
def build_vit_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True, symmetry: str = "permutation"
) -> PermutationSpec:
    """Symmetry spec of a ViT base model or image classifier; ``symmetry="orthogonal"``: the residual stream
    (LayerNorm, folded form) takes the orthogonal maps with Q·1 = 1."""
    axes, res = stream_collector("vit", shapes, "embeddings.cls_token", symmetry=symmetry, norm="layer",
                                 permute_residual=permute_residual)
    head_dim = config.hidden_size // config.num_attention_heads

    axes.add("embeddings.cls_token", None, None, res)
    axes.add("embeddings.position_embeddings", None, None, res)
    axes.conv("embeddings.patch_embeddings.projection", res, None)
    for i in range(config.num_hidden_layers):
        layer = f"layers.{i}"
        heads = heads_axis(f"{layer}.heads", head_dim, permute_heads)
        mlp = f"{layer}.mlp"

        axes.norm(f"{layer}.layernorm_before", res)
        qkv = tuple(f"{layer}.attention.{proj}" for proj in ("q_proj", "k_proj", "v_proj"))
        axes.attention(qkv, f"{layer}.attention.o_proj", heads, res)
        axes.norm(f"{layer}.layernorm_after", res)
        axes.mlp((f"{layer}.mlp.fc1",), f"{layer}.mlp.fc2", mlp, res)
    axes.norm("layernorm", res)
    if axes.has("pooler.dense.weight"):
        axes.linear("pooler.dense", None, res)
    if axes.has("classifier.weight", absolute=True):
        axes.linear("classifier", None, res, absolute=True)
    return axes.build()


def vit_folding(config, shapes):
    """layernorm_before -> q/k/v, layernorm_after -> fc1, the final layernorm -> pooler and classifier."""
    pre = find_prefix(shapes, "embeddings.cls_token", "vit")
    heads = [(r, 1) for r in (f"{pre}pooler.dense.weight", "classifier.weight") if r in shapes]
    norms = {"layernorm_before": [(f"attention.{p}", 1) for p in ("q_proj", "k_proj", "v_proj")],
             "layernorm_after": [("mlp.fc1", 1)]}
    return pre_norm_plan(pre, "layers", config.num_hidden_layers, norms, "layernorm", heads)


register_folding("vit", vit_folding)
declare_heads("vit", "ViTModel", "ViTForImageClassification")
