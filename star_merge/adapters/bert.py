"""Adapters for BERT and RoBERTa encoders (base model with pooler, sequence/token classifiers).

Permutations: ``residual`` (embeddings, every sub-layer output and LayerNorm, the pooler's input),
``encoder.layer.{i}.heads`` (whole attention heads), ``encoder.layer.{i}.mlp`` (intermediate units) and,
when a classifier reads them, the hidden units of the pooler (``pooler``, BERT) or of RoBERTa's
classification head (``classifier.dense``). A base model's ``pooler_output`` is a model output, so the
pooler's output units are then left in place.
"""

from __future__ import annotations

from ..spec import PermutationSpec
from .layout import AxesCollector, find_prefix, heads_axis
from .registry import register_adapter

__all__ = ["build_bert_spec"]


def build_bert_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True
) -> PermutationSpec:
    """Permutation spec of a BERT or RoBERTa base model, sequence classifier or token classifier."""
    model_type = config.model_type
    axes = AxesCollector(
        model_type, shapes, find_prefix(shapes, "embeddings.word_embeddings.weight", model_type)
    )
    res = "residual" if permute_residual else None
    head_dim = config.hidden_size // config.num_attention_heads

    axes.embedding("embeddings.word_embeddings", res)
    for table in ("position_embeddings", "token_type_embeddings"):
        axes.add_if_present(f"embeddings.{table}.weight", None, res)
    axes.norm("embeddings.LayerNorm", res)
    for i in range(config.num_hidden_layers):
        layer = f"encoder.layer.{i}"
        heads = heads_axis(f"{layer}.heads", head_dim, permute_heads)
        mlp = f"{layer}.mlp"

        qkv = tuple(f"{layer}.attention.self.{proj}" for proj in ("query", "key", "value"))
        axes.attention(qkv, f"{layer}.attention.output.dense", heads, res)
        axes.norm(f"{layer}.attention.output.LayerNorm", res)
        axes.mlp((f"{layer}.intermediate.dense",), f"{layer}.output.dense", mlp, res)
        axes.norm(f"{layer}.output.LayerNorm", res)

    has_pooler = axes.has("pooler.dense.weight")
    pooler_is_read = has_pooler and axes.has("classifier.weight", absolute=True)  # BERT sequence classifier
    if has_pooler:
        axes.linear("pooler.dense", "pooler" if pooler_is_read else None, res)
    if axes.has("classifier.dense.weight", absolute=True):  # RoBERTa: dense -> tanh -> out_proj on <s>
        axes.linear("classifier.dense", "classifier.dense", res, absolute=True)
        axes.linear("classifier.out_proj", None, "classifier.dense", absolute=True)
    elif axes.has("classifier.weight", absolute=True):  # token classifiers read the stream directly
        axes.linear("classifier", None, "pooler" if pooler_is_read else res, absolute=True)
    return axes.build()


for _model_type in ("bert", "roberta"):
    register_adapter(_model_type, build_bert_spec)
