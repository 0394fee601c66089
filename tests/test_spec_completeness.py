"""Every axis that can be permuted is permuted: a structural check of each adapter family's spec.

Function-invariance tests prove that what a spec permutes may be permuted; they cannot see an axis the
spec leaves alone (a whole permutation dropped still gives an invariant, just weaker, spec). Here the
expectation comes from the architecture's dimensions instead: in these tiny configs the hidden size,
the MLP width, the key/value width and the channel counts are sizes that no fixed axis (vocabulary,
positions, labels, kernels, input channels) shares, so every axis of such a size must carry a
permutation; every attention block must permute its heads as whole heads and every MLP its hidden units,
each with its own permutation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import transformers as T

from star_merge import spec_for
from star_merge.models import StarCNN1dConfig, StarCNN1dForClassification, StarMLPConfig, StarMLPForClassification

VOCAB = 97


@dataclass(frozen=True)
class Family:
    id: str
    build: callable
    permutable_sizes: tuple[int, ...]  # every axis of one of these sizes must be permuted
    layers: int = 0  # attention blocks (and MLP blocks) that must each have their own permutations
    head_dim: int = 0
    mlp_width: int = 0


# Attention output projections (the axis that reads the heads) and MLP output projections (the axis that
# reads the hidden units), by family naming; GPT-2's Conv1D stores [in, out], the others [out, in].
ATTENTION_OUT = re.compile(r"(self_attn\.o_proj|attn\.c_proj|attention\.output\.dense|attention\.o_proj)\.weight$")
MLP_OUT = re.compile(r"(mlp\.down_proj|mlp\.c_proj|layer\.\d+\.output\.dense|mlp\.fc2)\.weight$")


def _llama(cls, config_cls, **kw):
    c = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=37, pad_token_id=0, num_labels=3)
    return lambda: cls(config_cls(**{**c, **kw}))


def _bert(cls, config_cls):
    return lambda: cls(config_cls(vocab_size=VOCAB, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                                  intermediate_size=37, max_position_embeddings=40, num_labels=3))


def _gpt2(cls):
    return lambda: cls(T.GPT2Config(vocab_size=VOCAB, n_embd=24, n_layer=2, n_head=3, n_inner=37, n_positions=16,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2, num_labels=3))


FAMILIES = [
    Family("llama-lm-gqa", _llama(T.LlamaForCausalLM, T.LlamaConfig), (32, 37, 16), 2, 8, 37),
    Family("llama-cls-mha", _llama(T.LlamaForSequenceClassification, T.LlamaConfig, num_key_value_heads=4),
           (32, 37), 2, 8, 37),
    Family("mistral-lm", _llama(T.MistralForCausalLM, T.MistralConfig), (32, 37, 16), 2, 8, 37),
    Family("qwen2-lm", _llama(T.Qwen2ForCausalLM, T.Qwen2Config), (32, 37, 16), 2, 8, 37),
    Family("bert-cls", _bert(T.BertForSequenceClassification, T.BertConfig), (24, 37), 2, 8, 37),
    Family("bert-token", _bert(T.BertForTokenClassification, T.BertConfig), (24, 37), 2, 8, 37),
    Family("roberta-cls", _bert(T.RobertaForSequenceClassification, T.RobertaConfig), (24, 37), 2, 8, 37),
    Family("gpt2-lm", _gpt2(T.GPT2LMHeadModel), (24, 72, 37), 2, 8, 37),
    Family("gpt2-cls", _gpt2(T.GPT2ForSequenceClassification), (24, 72, 37), 2, 8, 37),
    Family("vit-cls", lambda: T.ViTForImageClassification(T.ViTConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=37, image_size=8,
        patch_size=4, num_labels=3)), (24, 37), 2, 8, 37),
    Family("resnet-basic", lambda: T.ResNetForImageClassification(T.ResNetConfig(
        num_channels=3, embedding_size=10, hidden_sizes=[12, 16], depths=[2, 2], layer_type="basic",
        num_labels=3)), (10, 12, 16)),
    Family("resnet-bottleneck", lambda: T.ResNetForImageClassification(T.ResNetConfig(
        num_channels=3, embedding_size=10, hidden_sizes=[20, 24], depths=[1, 2], layer_type="bottleneck",
        num_labels=3)), (10, 20, 24, 5, 6)),  # bottleneck inner width = hidden // reduction (4)
    Family("star-mlp", lambda: StarMLPForClassification(StarMLPConfig(hidden_sizes=[24, 31, 17])), (24, 31, 17)),
    Family("star-cnn1d", lambda: StarCNN1dForClassification(StarCNN1dConfig(channels=[6, 11, 13])), (6, 11, 13)),
]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.id for f in FAMILIES])
def family_spec(request):
    family = request.param
    model = family.build()
    return family, model, spec_for(model)


def test_every_axis_of_a_permutable_size_is_permuted(family_spec):
    family, model, spec = family_spec
    unpermuted = [
        f"{name} axis {axis} (size {size})"
        for name, axes in spec.axes_to_perm.items()
        for axis, (ap, size) in enumerate(zip(axes, spec.shapes[name]))
        if ap is None and size in family.permutable_sizes
    ]
    assert not unpermuted, f"{family.id}: axes left unpermuted: {unpermuted[:5]}"
    # and the sizes are real: each occurs in the model (so the check above looked at something)
    sizes = {s for shape in spec.shapes.values() for s in shape}
    assert set(family.permutable_sizes) <= sizes


def _reading_axis(name: str, spec) -> int:
    """The input axis of a projection: 0 for GPT-2's Conv1D ([in, out]), 1 for nn.Linear ([out, in])."""
    return 0 if ".c_proj." in name and "h." in name else 1


def test_every_attention_block_permutes_whole_heads(family_spec):
    family, model, spec = family_spec
    outs = [k for k in spec.axes_to_perm if ATTENTION_OUT.search(k)]
    assert len(outs) == family.layers, f"{family.id}: found attention outputs {outs}"
    names = set()
    for k in outs:
        ap = spec.axes_to_perm[k][_reading_axis(k, spec)]
        assert ap is not None, f"{family.id}: the heads read by {k} are never permuted"
        assert ap.block % family.head_dim == 0, f"{k}: block {ap.block} splits a head of {family.head_dim}"
        assert spec.perm_sizes[ap.perm] >= 2, f"{k}: a permutation of one head group moves nothing"
        names.add(ap.perm)
    assert len(names) == family.layers, f"{family.id}: attention blocks share head permutations {names}"


def test_every_mlp_permutes_its_hidden_units(family_spec):
    family, model, spec = family_spec
    outs = [k for k in spec.axes_to_perm if MLP_OUT.search(k)]
    assert len(outs) == family.layers, f"{family.id}: found MLP outputs {outs}"
    names = set()
    for k in outs:
        ap = spec.axes_to_perm[k][_reading_axis(k, spec)]
        assert ap is not None, f"{family.id}: the hidden units read by {k} are never permuted"
        assert ap.block == 1 and spec.perm_sizes[ap.perm] == family.mlp_width, (k, ap)
        names.add(ap.perm)
    assert len(names) == family.layers


def test_options_that_remove_permutations_are_the_only_way_to_lose_them():
    """``permute_heads=False`` removes exactly the head permutations, which the default spec must have."""
    model = _gpt2(T.GPT2LMHeadModel)()
    full, no_heads = spec_for(model), spec_for(model, permute_heads=False)
    heads = {p for p in full.perm_sizes if p.endswith(".heads")}
    assert len(heads) == 2 and set(full.perm_sizes) - set(no_heads.perm_sizes) == heads
