"""Adapter for GPT-2 (``GPT2Model``, ``GPT2LMHeadModel``, and the sequence, token and span classifiers).

GPT-2's ``Conv1D`` layers store weights as ``[in, out]``. The fused ``c_attn`` output is
``[q | k | v]``, each ``n_head * head_dim`` wide, so heads permute with ``AxisPerm(heads, block=head_dim,
repeat=3)``. ``lm_head`` (tied to ``wte`` unless ``tie_word_embeddings=False``) and the classifier heads
read the residual stream.
"""

from __future__ import annotations

from ..spec import AxisPerm, PermutationSpec
from .folding import pre_norm_plan, register_folding
from .heads import declare_heads
from .layout import find_prefix, present_readers, stream_collector
from .registry import register_adapter

__all__ = ["build_gpt2_spec", "gpt2_folding"]

@register_adapter("gpt2")
def build_gpt2_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True, symmetry: str = "permutation"
) -> PermutationSpec:
    """Symmetry spec of a GPT-2 base model, LM head model or classifier.

    Every projection is a ``Conv1D`` (weights ``[in, out]``), so each one is declared transposed. With
    ``symmetry="orthogonal"`` the residual stream (LayerNorm, folded form) takes the orthogonal maps with Q·1 = 1.
    """
    axes, res = stream_collector("gpt2", shapes, "wte.weight", symmetry=symmetry, norm="layer",
                                 permute_residual=permute_residual)
    head_dim = config.n_embd // config.n_head

    axes.embedding("wte", res)
    axes.embedding("wpe", res)
    for i in range(config.n_layer):
        layer = f"h.{i}"
        heads = f"{layer}.heads" if permute_heads else None
        qkv = AxisPerm(heads, block=head_dim, repeat=3) if heads else None
        attn_out = AxisPerm(heads, block=head_dim) if heads else None
        mlp = f"{layer}.mlp"

        axes.norm(f"{layer}.ln_1", res)
        axes.conv1d_transposed(f"{layer}.attn.c_attn", res, qkv)
        axes.conv1d_transposed(f"{layer}.attn.c_proj", attn_out, res)
        axes.norm(f"{layer}.ln_2", res)
        axes.conv1d_transposed(f"{layer}.mlp.c_fc", res, mlp)
        axes.conv1d_transposed(f"{layer}.mlp.c_proj", mlp, res)
    axes.norm("ln_f", res)
    axes.residual_readers(res)
    return axes.build()


def gpt2_folding(config, shapes):
    """ln_1 -> c_attn, ln_2 -> c_fc (Conv1D: input rows, axis 0), ln_f -> the head (input columns)."""
    heads = present_readers(shapes)
    return pre_norm_plan(find_prefix(shapes, "wte.weight", "gpt2"), "h", config.n_layer,
                         {"ln_1": [("attn.c_attn", 0)], "ln_2": [("mlp.c_fc", 0)]}, "ln_f", heads)


register_folding("gpt2", gpt2_folding)
declare_heads(
    "gpt2",
    "GPT2Model",
    "GPT2LMHeadModel",
    "GPT2ForSequenceClassification",
    "GPT2ForTokenClassification",
    "GPT2ForQuestionAnswering",
)
