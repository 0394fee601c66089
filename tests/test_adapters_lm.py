"""Language-model heads: structural completeness of their specs, the declared-heads listing, and controls.

tests/test_adapters.py proves every head numerically (function invariance, movement, exact recovery).
This file checks, from the model's own modules rather than the adapter's code, that the specs of the
language-model heads are complete: every attention block has its head permutation, every MLP its hidden
permutation, and the residual permutation covers every embedding, every norm and the LM head. It also
checks that ``star-merge adapters`` lists exactly the heads that are proven, and shows with negative
controls that a wrong layout is caught by the invariance check.
"""

from __future__ import annotations

import pytest
import torch
import transformers as T
from test_adapters import CASES, make_inputs, randomise_, relative_error
from torch import nn

from star_merge import apply_permutation, random_permutation, spec_for
from star_merge.adapters import supported_model_types
from star_merge.adapters.heads import supported_heads
from star_merge.cli import main
from star_merge.spec import AxisPerm, PermutationSpec, SpecError

#: Per family, names (relative to one block) of the attention projections reading / writing the stream, and of
#: the MLP's input and output layers. ``conv1d``: GPT-2 stores weights ``[in, out]``.
_LLAMA = dict(
    layers="layers",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    out="self_attn.o_proj",
    up=("mlp.gate_proj", "mlp.up_proj"),
    down="mlp.down_proj",
)
_BERT = dict(
    layers="encoder.layer",
    qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
    out="attention.output.dense",
    up=("intermediate.dense",),
    down="output.dense",
)
LAYOUTS = {
    "gpt_neox": dict(
        layers="layers",
        qkv=("attention.query_key_value",),
        out="attention.dense",
        up=("mlp.dense_h_to_4h",),
        down="mlp.dense_4h_to_h",
    ),
    "gpt2": dict(
        layers="h",
        qkv=("attn.c_attn",),
        out="attn.c_proj",
        up=("mlp.c_fc",),
        down="mlp.c_proj",
        conv1d=True,  # GPT-2's Conv1D stores weights [in, out]
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "bert": _BERT,
    "roberta": _BERT,
}
LM_CASES = [
    "gpt_neox-causal-parallel",
    "gpt_neox-causal-sequential",
    "gpt_neox-causal-tied-nobias-rot50",
    "gpt_neox-base",
    "bert-mlm",
    "bert-pretraining",
    "bert-causal",
    "roberta-mlm",
    "roberta-causal",
    "gpt2-lm-tied",
    "gpt2-lm-untied",
    "llama-causal-gqa2-tied",
    "llama-causal-mqa-untied-bias",
    "mistral-causal",
    "mistral-causal-tied-gqa",
    "qwen2-causal-tied",
    "qwen2-causal-untied-mqa",
]


def case(case_id):
    return next(c for c in CASES if c.id == case_id)


def meta_model(case_id) -> nn.Module:
    c = case(case_id)
    with torch.device("meta"):
        return c.cls(c.config())


def perm_of(spec: PermutationSpec, name: str, axis: int) -> AxisPerm | None:
    return spec.axes_to_perm[name][axis]


def perm_name(spec: PermutationSpec, name: str, axis: int) -> str | None:
    entry = spec.axes_to_perm[name][axis]
    return None if entry is None else entry.perm


def assert_structure(model: nn.Module, spec: PermutationSpec) -> None:
    """Heads per attention block, hidden units per MLP, one residual permutation over the whole stream."""
    layout = LAYOUTS[model.config.model_type]
    base = model.base_model_prefix + "." if hasattr(model, model.base_model_prefix) else ""
    out_ax, in_ax = (1, 0) if layout.get("conv1d") else (0, 1)
    blocks = model.get_submodule(base + layout["layers"])
    names = dict(model.named_parameters(remove_duplicate=False))
    n_heads = getattr(model.config, "num_attention_heads", None) or model.config.n_head
    n_kv = getattr(model.config, "num_key_value_heads", None) or n_heads
    head_perms, mlp_perms = set(), set()
    for i in range(len(blocks)):
        block = f"{base}{layout['layers']}.{i}."
        # Attention: q/k/v rows (and biases) and the output projection's columns share one head permutation.
        readers = [block + q for q in layout["qkv"]]
        heads = {perm_name(spec, r + ".weight", out_ax) for r in readers}
        assert len(heads) == 1, f"{block}: q/k/v carry different permutations {heads}"
        h = heads.pop()
        assert h is not None and "heads" in h and spec.perm_sizes[h] == n_kv, (block, h)
        assert perm_name(spec, block + layout["out"] + ".weight", in_ax) == h
        for r in readers:
            if r + ".bias" in names:
                assert perm_name(spec, r + ".bias", 0) == h
            assert perm_name(spec, r + ".weight", in_ax) == "residual"
        assert perm_name(spec, block + layout["out"] + ".weight", out_ax) == "residual"
        # MLP: every input layer's units, the output layer's columns; element-wise, all units.
        ups = [block + u + ".weight" for u in layout["up"]]
        mlp = {perm_of(spec, u, out_ax) for u in ups}
        assert len(mlp) == 1, f"{block}: MLP inputs carry different permutations {mlp}"
        m = mlp.pop()
        assert m is not None and m.block == 1 and spec.perm_sizes[m.perm] == names[ups[0]].shape[out_ax]
        assert perm_of(spec, block + layout["down"] + ".weight", in_ax) == m
        assert all(perm_name(spec, u, in_ax) == "residual" for u in ups)
        assert perm_name(spec, block + layout["down"] + ".weight", out_ax) == "residual"
        head_perms.add(h)
        mlp_perms.add(m.perm)
    assert len(head_perms) == len(mlp_perms) == len(blocks) > 1  # one of each per block, none shared
    # The residual stream, found from the modules: every embedding, every norm, the LM head.
    readers_of_stream = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            assert spec.axes_to_perm[name + ".weight"] == (None, AxisPerm("residual")), name
            readers_of_stream += 1
        elif isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("RMSNorm"):
            assert perm_of(spec, name + ".weight", 0) == AxisPerm("residual"), name
            if name + ".bias" in names:
                assert perm_of(spec, name + ".bias", 0) == AxisPerm("residual"), name
            readers_of_stream += 1
    assert readers_of_stream >= 2 * len(blocks) + 2
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head_name = next(n for n, mod in model.named_modules() if mod is head)
        assert spec.axes_to_perm[head_name + ".weight"] == (None, AxisPerm("residual"))
        assert spec.perm_sizes["residual"] == head.weight.shape[1]
        vocab_bias = [k for k in names if k.endswith("bias") and names[k].shape == (head.weight.shape[0],)]
        assert all(spec.axes_to_perm[k] == (None,) for k in vocab_bias)  # per-token biases never move


@pytest.mark.parametrize("case_id", LM_CASES)
def test_lm_specs_are_structurally_complete(case_id):
    model = meta_model(case_id)
    assert_structure(model, spec_for(model))


def test_structure_check_catches_a_spec_without_heads():
    model = meta_model("gpt_neox-causal-parallel")
    with pytest.raises(AssertionError, match="layers.0"):
        assert_structure(model, spec_for(model, permute_heads=False))
    with pytest.raises(AssertionError):
        assert_structure(model, spec_for(model, permute_residual=False))


def test_bert_pretraining_heads_read_the_right_frames():
    model = meta_model("bert-pretraining")
    spec = spec_for(model)
    axes = spec.axes_to_perm
    assert axes["bert.pooler.dense.weight"] == (AxisPerm("pooler"), AxisPerm("residual"))
    assert axes["cls.seq_relationship.weight"] == (None, AxisPerm("pooler"))  # NSP reads the pooler
    assert axes["cls.predictions.transform.dense.weight"] == (AxisPerm("residual"), AxisPerm("residual"))
    assert axes["cls.predictions.decoder.weight"] == axes["bert.embeddings.word_embeddings.weight"]
    assert axes["cls.predictions.bias"] == axes["cls.predictions.decoder.bias"] == (None,)


def test_gpt_neox_heads_are_blocks_of_three_head_dims():
    model = meta_model("gpt_neox-causal-parallel")
    spec = spec_for(model)
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    qkv = spec.axes_to_perm["gpt_neox.layers.0.attention.query_key_value.weight"][0]
    assert qkv == AxisPerm("layers.0.heads", block=3 * head_dim)
    dense = spec.axes_to_perm["gpt_neox.layers.0.attention.dense.weight"]
    assert dense == (AxisPerm("residual"), AxisPerm("layers.0.heads", block=head_dim))
    assert model.gpt_neox.layers[0].attention.rotary_ndims == head_dim // 4  # partial rotary, as in Pythia


# ---------------------------------------------------------------------- negative controls
def _logit_change(case_id: str, edit) -> float:
    """Relative logit change after a random permutation under the adapter's spec edited by ``edit``."""
    c = case(case_id)
    torch.manual_seed(0)
    model = c.cls(c.config()).eval()
    inputs = make_inputs(c.inputs, model.config)
    randomise_(model, inputs)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    spec = spec_for(model)
    spec = PermutationSpec({k: edit(k, v) for k, v in spec.axes_to_perm.items()}, spec.shapes)
    with torch.no_grad():
        reference = model(**inputs).logits
        model.load_state_dict(apply_permutation(spec, random_permutation(spec, 0), sd))
        return relative_error(model(**inputs).logits, reference)


def test_gpt2_qkv_layout_on_gpt_neox_changes_the_function():
    """GPT-NeoX interleaves q, k, v per head; treating the rows as [q | k | v] (GPT-2) is not a symmetry."""
    head_dim = 8

    def gpt2_layout(name, axes):
        if "query_key_value" in name and axes[0] is not None:
            return (AxisPerm(axes[0].perm, block=head_dim, repeat=3), *axes[1:])
        return axes

    assert _logit_change("gpt_neox-causal-parallel", lambda k, v: v) < 1e-5
    assert _logit_change("gpt_neox-causal-parallel", gpt2_layout) > 1e-2


def test_mlm_transform_outside_the_residual_frame_changes_the_function():
    """The tied decoder reads the transform's output in the word embeddings' (residual) frame."""

    def own_frame(name, axes):
        if name.startswith("cls.predictions.transform."):
            return tuple(AxisPerm("transform") if a is not None and i == 0 else a for i, a in enumerate(axes))
        return axes

    assert _logit_change("bert-mlm", own_frame) > 1e-2


# ---------------------------------------------------------------------- the declared heads
#: Classes an adapter happens to accept but does not declare, because no test proves them.
UNPROVEN_BUT_ACCEPTED = {"ResNetBackbone"}


def _transformers_classes(model_type: str) -> set[str]:
    """Every model class transformers' auto mappings register for ``model_type``."""
    from transformers.models.auto import modeling_auto

    config_class = T.CONFIG_MAPPING[model_type]
    out = set()
    for attr in dir(modeling_auto):
        if attr.endswith("_MAPPING_NAMES") and not attr.startswith("CONFIG"):
            names = getattr(modeling_auto, attr).get(model_type) or ()
            for n in [names] if isinstance(names, str) else names:
                cls = getattr(T, n, None)
                if isinstance(cls, type) and issubclass(cls, T.PreTrainedModel):
                    if getattr(cls, "config_class", None) in (None, config_class):
                        out.add(n)
    return out


def test_every_declared_head_is_proven():
    proven = {c.cls.__name__ for c in CASES}
    for model_type in supported_model_types():
        heads = supported_heads(model_type)
        assert heads, f"{model_type} declares no heads"
        if model_type.startswith("star-"):
            continue  # the built-in models are proven in tests/test_matching.py and tests/test_models.py
        if model_type == "timm_wrapper":  # proven per timm family in tests/test_adapters_timm.py (make test-vision)
            assert set(heads) == {"TimmWrapperForImageClassification"}
            continue
        assert set(heads) <= proven, f"{model_type}: declared but untested {set(heads) - proven}"


@pytest.mark.parametrize("model_type", sorted(set(LAYOUTS) | {"vit", "resnet"}))
def test_undeclared_heads_are_refused(model_type):
    """The listing is complete: any other class transformers has for the type fails with a SpecError."""
    config_factory = next(c.config for c in CASES if c.config().model_type == model_type)
    declared = set(supported_heads(model_type))
    others = _transformers_classes(model_type) - declared - UNPROVEN_BUT_ACCEPTED
    assert declared <= _transformers_classes(model_type)
    for name in sorted(others):
        with torch.device("meta"):
            model = getattr(T, name)(config_factory())
        with pytest.raises(SpecError):
            spec_for(model)


def test_cli_lists_heads_per_model_type(capsys):
    assert main(["adapters"]) == 0
    lines = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines()}
    assert lines["gpt_neox"][:2] == ["GPTNeoXModel", "GPTNeoXForCausalLM"]
    assert {"BertForMaskedLM", "BertForPreTraining"} <= set(lines["bert"])
    for model_type in ("gpt2", "llama", "mistral", "qwen2"):
        assert any(h.endswith(("ForCausalLM", "LMHeadModel")) for h in lines[model_type])
    assert lines["star-mlp"] == ["StarMLPForClassification"]
    assert set(lines) == set(supported_model_types())


# ---------------------------------------------------------------------- a Pythia-format checkpoint
def _write_pythia_checkpoint(folder, model) -> None:
    """Save ``model`` the way EleutherAI's Pythia checkpoints are laid out on the Hub.

    Legacy config keys (``rotary_pct``, ``rotary_emb_base``), the output layer stored as ``embed_out`` and the
    causal-mask buffers ``attention.bias`` / ``attention.masked_bias`` that old checkpoints carry.
    """
    import json

    from safetensors.torch import save_file

    c = model.config
    folder.mkdir()
    config = {
        "architectures": ["GPTNeoXForCausalLM"],
        "model_type": "gpt_neox",
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "rotary_pct": 0.25,
        "rotary_emb_base": 10000,
        "use_parallel_residual": True,
        "tie_word_embeddings": False,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd["embed_out.weight"] = sd.pop("lm_head.weight")
    positions = c.max_position_embeddings
    for i in range(c.num_hidden_layers):
        sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.tril(torch.ones(positions, positions, dtype=torch.bool))[
            None, None
        ]
        sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def test_pythia_format_checkpoints_align_exactly(tmp_path, monkeypatch):
    """B = A permuted, both in Pythia's on-Hub layout: ``align`` gives back A's weights and A's logits."""
    from star_merge.matching.checkpoints import align_checkpoints
    from star_merge.modeling import load_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = case("gpt_neox-causal-parallel")
    torch.manual_seed(0)
    model = c.cls(c.config()).eval()
    inputs = make_inputs("tokens", model.config)
    randomise_(model, inputs)
    _write_pythia_checkpoint(tmp_path / "a", model)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    spec = spec_for(model)
    model.load_state_dict(apply_permutation(spec, random_permutation(spec, 5), original))
    _write_pythia_checkpoint(tmp_path / "b", model)

    a = load_checkpoint(str(tmp_path / "a")).eval()
    assert a.config.rope_parameters["partial_rotary_factor"] == 0.25 and a.config.use_parallel_residual
    assert all(torch.equal(a.state_dict()[k], v) for k, v in original.items())  # embed_out -> lm_head
    qkv = "gpt_neox.layers.0.attention.query_key_value.weight"
    assert not torch.equal(load_checkpoint(str(tmp_path / "b")).state_dict()[qkv], original[qkv])
    align_checkpoints(str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "aligned"), seed=0)
    aligned = load_checkpoint(str(tmp_path / "aligned")).eval()
    assert all(torch.equal(aligned.state_dict()[k], v) for k, v in original.items())
    with torch.no_grad():
        assert torch.equal(aligned(**inputs).logits, a(**inputs).logits)
