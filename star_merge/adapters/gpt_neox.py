"""Adapter for GPT-NeoX / Pythia (``GPTNeoXModel``, ``…ForCausalLM``, ``…ForSequenceClassification``,
``…ForTokenClassification``, ``…ForQuestionAnswering``).

The fused ``attention.query_key_value`` output is laid out per head: ``view(…, num_heads, 3 * head_dim)``
then ``chunk(3)``, so its rows are ``[num_heads, 3, head_dim]`` (head 0's q, k, v, then head 1's …), unlike
GPT-2's ``[q | k | v]``. A head is therefore one block of ``3 * head_dim`` rows, and heads permute with
``AxisPerm(heads, block=3 * head_dim)``; the output projection ``attention.dense`` reads ``[num_heads,
head_dim]`` columns (``block=head_dim``). Rotary embeddings act on the first ``rotary_pct * head_dim`` dims
of every q and k head (Pythia: 25 %); heads only ever move whole, so the partial rotary split is untouched.

Both residual layouts (``use_parallel_residual`` True: ``x + attn(ln1(x)) + mlp(ln2(x))``; False:
sequential) read and write one residual stream, so one permutation ``residual`` covers ``embed_in``, both
layer norms of every block, ``final_layer_norm`` and the head (``lm_head``, which checkpoints name
``embed_out`` and transformers renames on load; untied in Pythia, tied if ``tie_word_embeddings``).
Permutations: ``residual``, ``layers.{i}.heads``, ``layers.{i}.mlp``.
"""

from __future__ import annotations

from ..spec import PermutationSpec
from .folding import pre_norm_plan, register_folding
from .heads import declare_heads
from .layout import find_prefix, heads_axis, present_readers, stream_collector
from .registry import register_adapter

__all__ = ["build_gpt_neox_spec", "gpt_neox_folding"]

@register_adapter("gpt_neox")
def build_gpt_neox_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True, symmetry: str = "permutation"
) -> PermutationSpec:
    """Symmetry spec of a GPT-NeoX base model, causal LM or classifier; ``symmetry="orthogonal"``: the residual
    stream (LayerNorm, folded form) takes the orthogonal maps with Q·1 = 1."""
    axes, res = stream_collector("gpt_neox", shapes, "embed_in.weight", symmetry=symmetry, norm="layer",
                                 permute_residual=permute_residual)
    head_dim = config.hidden_size // config.num_attention_heads

    axes.embedding("embed_in", res)
    for i in range(config.num_hidden_layers):
        layer = f"layers.{i}"
        qkv = heads_axis(f"{layer}.heads", 3 * head_dim, permute_heads)  # rows [num_heads, 3, head_dim]
        attn_out = heads_axis(f"{layer}.heads", head_dim, permute_heads)
        mlp = f"{layer}.mlp"

        axes.norm(f"{layer}.input_layernorm", res)
        axes.linear(f"{layer}.attention.query_key_value", qkv, res)
        axes.linear(f"{layer}.attention.dense", res, attn_out)
        axes.norm(f"{layer}.post_attention_layernorm", res)
        axes.mlp((f"{layer}.mlp.dense_h_to_4h",), f"{layer}.mlp.dense_4h_to_h", mlp, res)
    axes.norm("final_layer_norm", res)
    axes.residual_readers(res)
    return axes.build()


def gpt_neox_folding(config, shapes):
    """Input norm -> query_key_value, post-attention norm -> dense_h_to_4h, final norm -> the head."""
    heads = present_readers(shapes)
    norms = {"input_layernorm": [("attention.query_key_value", 1)],
             "post_attention_layernorm": [("mlp.dense_h_to_4h", 1)]}
    return pre_norm_plan(find_prefix(shapes, "embed_in.weight", "gpt_neox"), "layers", config.num_hidden_layers,
                         norms, "final_layer_norm", heads)


register_folding("gpt_neox", gpt_neox_folding)
declare_heads(
    "gpt_neox",
    "GPTNeoXModel",
    "GPTNeoXForCausalLM",
    "GPTNeoXForSequenceClassification",
    "GPTNeoXForTokenClassification",
    "GPTNeoXForQuestionAnswering",
)
