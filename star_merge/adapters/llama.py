"""Adapters for Llama-style decoders: Llama, Mistral and Qwen2 (RMSNorm, rotary attention, GQA, gated MLP).

Permutations: ``residual`` (the hidden stream, shared by the embeddings, every block's projections and
norms, the final norm and the head), ``layers.{i}.kv_heads`` (whole key/value heads of layer ``i``; the
group of query heads that reads a key/value head moves with it) and ``layers.{i}.mlp`` (the gated MLP's
intermediate units). Rotary embeddings act inside each head, so heads are only ever moved whole.
"""

from __future__ import annotations

from ..spec import AxisPerm, PermutationSpec, SpecError
from .folding import pre_norm_plan, register_folding
from .heads import declare_heads
from .layout import find_prefix, present_readers, stream_collector
from .registry import register_adapter

__all__ = ["build_llama_spec", "llama_folding"]

def build_llama_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True, symmetry: str = "permutation"
) -> PermutationSpec:
    """Symmetry spec of a Llama, Mistral or Qwen2 base model, causal LM or classifier; ``symmetry="orthogonal"``:
    the residual stream (RMSNorm, folded form) is O(d)."""
    model_type = config.model_type
    axes, res = stream_collector(model_type, shapes, "embed_tokens.weight", symmetry=symmetry, norm="rms",
                                 permute_residual=permute_residual)
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    if n_heads % n_kv:
        raise SpecError(
            f"{model_type}: num_attention_heads={n_heads} is not a multiple of num_key_value_heads={n_kv}"
        )

    axes.embedding("embed_tokens", res)
    for i in range(config.num_hidden_layers):
        layer = f"layers.{i}"
        head_dim = axes.shape(f"{layer}.self_attn.k_proj.weight")[0] // n_kv
        group_width = head_dim * (n_heads // n_kv)  # one key/value head's query heads, contiguous in q rows
        kv = AxisPerm(f"{layer}.kv_heads", block=head_dim) if permute_heads else None
        q = AxisPerm(f"{layer}.kv_heads", block=group_width) if permute_heads else None
        mlp = f"{layer}.mlp"

        axes.norm(f"{layer}.input_layernorm", res)
        axes.linear(f"{layer}.self_attn.q_proj", q, res)
        axes.linear(f"{layer}.self_attn.k_proj", kv, res)
        axes.linear(f"{layer}.self_attn.v_proj", kv, res)
        axes.linear(f"{layer}.self_attn.o_proj", res, q)
        axes.norm(f"{layer}.post_attention_layernorm", res)
        axes.mlp((f"{layer}.mlp.gate_proj", f"{layer}.mlp.up_proj"), f"{layer}.mlp.down_proj", mlp, res)
    axes.norm("norm", res)
    axes.residual_readers(res)
    return axes.build()


def llama_folding(config, shapes):
    """Input norm -> q/k/v, post-attention norm -> gate/up, final norm -> the head (input columns)."""
    heads = present_readers(shapes)
    norms = {"input_layernorm": [(f"self_attn.{p}", 1) for p in ("q_proj", "k_proj", "v_proj")],
             "post_attention_layernorm": [(f"mlp.{p}", 1) for p in ("gate_proj", "up_proj")]}
    return pre_norm_plan(find_prefix(shapes, "embed_tokens.weight", config.model_type), "layers",
                         config.num_hidden_layers, norms, "norm", heads)


_HEADS = (
    "Model",
    "ForCausalLM",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForQuestionAnswering",
)
for _model_type, _prefix in (("llama", "Llama"), ("mistral", "Mistral"), ("qwen2", "Qwen2")):
    register_adapter(_model_type, build_llama_spec)
    register_folding(_model_type, llama_folding)
    declare_heads(_model_type, *(_prefix + head for head in _HEADS))
