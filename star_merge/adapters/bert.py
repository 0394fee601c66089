"""Adapters for BERT and RoBERTa encoders: base model (with pooler), sequence, token and multiple-choice
classifiers, question answering, and the language-model heads (masked LM, BERT pre-training, causal LM).

Permutations: ``residual`` (embeddings, every sub-layer output and LayerNorm, the pooler's input),
``encoder.layer.{i}.heads`` (whole attention heads), ``encoder.layer.{i}.mlp`` (intermediate units) and,
when a head reads them, the hidden units of the pooler (``pooler``: BERT's classifier or next-sentence head
``cls.seq_relationship``) or of RoBERTa's classification head (``classifier.dense``). A base model's
``pooler_output`` is a model output, so the pooler's output units are then left in place.

The MLM head (BERT ``cls.predictions``, RoBERTa ``lm_head``) is ``dense -> gelu -> LayerNorm -> decoder``
with the decoder tied to the word embeddings. The decoder reads the transform's output with the word
embeddings' columns, which are in the residual frame, so the transform's dense layer and LayerNorm live in
the residual frame too (rows and columns by ``residual``). The decoder bias and the separate output bias
(``cls.predictions.bias``, tied to ``decoder.bias``) are per vocabulary entry and never move.
"""

from __future__ import annotations

from ..spec import PermutationSpec
from .folding import register_folding
from .heads import declare_heads
from .layout import AxesCollector, find_prefix, heads_axis
from .registry import register_adapter

__all__ = ["build_bert_spec", "bert_folding"]


def build_bert_spec(
    config, shapes, *, permute_residual: bool = True, permute_heads: bool = True
) -> PermutationSpec:
    """Permutation spec of a BERT or RoBERTa base model or any of the heads declared below."""
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
    # The pooler's output is read by BERT's classifier (sequence / multiple choice) or next-sentence head.
    pooler_is_read = has_pooler and (
        axes.has("classifier.weight", absolute=True) or axes.has("cls.seq_relationship.weight", absolute=True)
    )
    pooled = "pooler" if pooler_is_read else None
    if has_pooler:
        axes.linear("pooler.dense", pooled, res)
    if axes.has("classifier.dense.weight", absolute=True):  # RoBERTa: dense -> tanh -> out_proj on <s>
        axes.linear("classifier.dense", "classifier.dense", res, absolute=True)
        axes.linear("classifier.out_proj", None, "classifier.dense", absolute=True)
    elif axes.has("classifier.weight", absolute=True):  # token classifiers read the stream directly
        axes.linear("classifier", None, pooled or res, absolute=True)
    if axes.has("qa_outputs.weight", absolute=True):  # span start/end logits per token
        axes.linear("qa_outputs", None, res, absolute=True)
    for mlm in ("cls.predictions", "lm_head"):  # BERT / RoBERTa masked-LM (or causal-LM) head
        if axes.has(f"{mlm}.decoder.weight", absolute=True):
            _mlm_head(axes, mlm, res)
    if axes.has("cls.seq_relationship.weight", absolute=True):  # next-sentence prediction on the pooler
        axes.linear("cls.seq_relationship", None, pooled, absolute=True)
    return axes.build()


def _mlm_head(axes: AxesCollector, head: str, res) -> None:
    """``dense -> act -> LayerNorm -> decoder`` (tied to the word embeddings), all in the residual frame."""
    transform = f"{head}.transform" if axes.has(f"{head}.transform.dense.weight", absolute=True) else head
    axes.linear(f"{transform}.dense", res, res, absolute=True)
    norm = "LayerNorm" if axes.has(f"{transform}.LayerNorm.weight", absolute=True) else "layer_norm"
    axes.norm(f"{transform}.{norm}", res, absolute=True)
    axes.linear(f"{head}.decoder", None, res, absolute=True)
    axes.add(f"{head}.bias", None, absolute=True)


def bert_folding(config, shapes):
    """Post-LN: the residual stream is a LayerNorm's output carried on by the residual connections, so its norms
    cannot be folded (and the stream keeps permutations under ``symmetry="orthogonal"``). The masked-LM
    transform's LayerNorm is read by the decoder alone: it folds into the decoder's columns (untying it from the
    word embeddings)."""
    plan = []
    for head in ("cls.predictions", "lm_head"):
        transform = f"{head}.transform" if f"{head}.transform.dense.weight" in shapes else head
        for norm in ("LayerNorm", "layer_norm"):
            if f"{transform}.{norm}.weight" in shapes and f"{head}.decoder.weight" in shapes:
                plan.append((f"{transform}.{norm}.weight", [(f"{head}.decoder.weight", 1)]))
    return plan


for _model_type in ("bert", "roberta"):
    register_adapter(_model_type, build_bert_spec)
    register_folding(_model_type, bert_folding)
_COMMON_HEADS = (
    "Model",
    "ForSequenceClassification",
    "ForTokenClassification",
    "ForMultipleChoice",
    "ForQuestionAnswering",
    "ForMaskedLM",
)
declare_heads(
    "bert",
    *(f"Bert{h}" for h in _COMMON_HEADS),
    "BertForPreTraining",
    "BertForNextSentencePrediction",
    "BertLMHeadModel",
)
declare_heads("roberta", *(f"Roberta{h}" for h in _COMMON_HEADS), "RobertaForCausalLM")
