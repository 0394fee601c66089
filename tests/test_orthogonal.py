"""Orthogonal symmetries of transformers (issue 25): the folded form, orthogonal groups, Procrustes.

For every family with a head (Llama / Mistral / Qwen2, GPT-2, GPT-NeoX, BERT / RoBERTa masked LM, ViT), at small
widths and three seeds: folding leaves the outputs unchanged (relative 1e-5); a random element of the groups that
``spec_for(..., symmetry="orthogonal")`` declares leaves them unchanged (1e-4, float32) while moving most weights;
weight matching (Procrustes for the orthogonal groups, assignment for the rest, one descent) recovers a randomly
transformed copy (relative weight error <= 1e-4); and negative controls (a full orthogonal map on a LayerNorm stream,
without Q·1 = 1; an orthogonal map on an unfolded RMSNorm model) change the outputs.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from test_adapters import CASES, make_inputs, randomise_, relative_error, run

from star_merge import apply_permutation, inverse_permutation, random_permutation, spec_for, weight_matching
from star_merge.adapters.folding import fold_model, fold_state_dict, is_folded
from star_merge.groups import (ORTHOGONAL, ORTHOGONAL_MEAN_FREE, PERMUTATION, best_orthogonal, load_maps,
                               mean_free_basis, random_map, save_maps)
from star_merge.spec import SpecError, compose_permutations

SEEDS = (0, 1, 2)
#: One case per family and head shape: tied and untied heads, GQA / MQA, parallel and sequential residuals.
ORTHO_CASES = ("llama-causal-gqa2-tied", "llama-seqcls", "mistral-causal", "qwen2-causal-untied-mqa",
               "gpt2-lm-tied", "gpt2-seqcls", "gpt_neox-causal-parallel", "gpt_neox-causal-sequential",
               "bert-mlm", "roberta-mlm", "vit-imgcls")
STREAM_KIND = {"llama": ORTHOGONAL, "mistral": ORTHOGONAL, "qwen2": ORTHOGONAL, "gpt2": ORTHOGONAL_MEAN_FREE,
               "gpt_neox": ORTHOGONAL_MEAN_FREE, "vit": ORTHOGONAL_MEAN_FREE, "bert": None, "roberta": None}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def folded(case_id: str):
    """(original model, its folded copy, inputs, reference outputs, orthogonal spec of the folded copy)."""
    case = next(c for c in CASES if c.id == case_id)
    torch.manual_seed(0)
    model = case.cls(case.config()).eval()
    inputs = make_inputs(case.inputs, model.config)
    randomise_(model, inputs)  # norm weights are far from 1: folding is not a no-op
    ref = run(model, inputs, case.outputs)
    f = fold_model(model).eval()
    return model, f, inputs, ref, spec_for(f, symmetry="orthogonal"), case.outputs


def _max_rel(a: dict, b: dict) -> float:
    return max(relative_error(a[k], b[k]) for k in a)


def _changed(model, sd, inputs, names) -> dict:
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    try:
        return run(model, inputs, names)
    finally:
        model.load_state_dict(saved)


@pytest.mark.parametrize("case_id", ORTHO_CASES)
def test_folding_preserves_function_and_is_an_ordinary_checkpoint(case_id, tmp_path):
    """Outputs within 1e-5; same class; every folded norm weight is 1; a tied head is untied; the folded copy
    saves and loads with from_pretrained as the same class and computes the same outputs."""
    model, f, inputs, ref, _, names = folded(case_id)
    assert type(f) is type(model)
    assert _max_rel(run(f, inputs, names), ref) <= 1e-5
    sd = f.state_dict()
    assert is_folded(f.config, sd) and not is_folded(model.config, model.state_dict())
    if getattr(model.config, "tie_word_embeddings", False) and case_id.split("-")[1] in ("causal", "lm", "mlm"):
        assert f.config.tie_word_embeddings is False
    f.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert _max_rel(run(loaded, inputs, names), ref) <= 1e-5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", ORTHO_CASES)
def test_random_group_element_preserves_function_and_moves_weights(case_id, seed):
    model, f, inputs, ref, spec, names = folded(case_id)
    kind = STREAM_KIND[model.config.model_type]
    assert spec.group_kinds.get("residual") == kind
    maps = random_permutation(spec, seed)
    spec.check_permutation(maps)
    sd = f.state_dict()
    moved = apply_permutation(spec, maps, sd)
    assert _max_rel(_changed(f, moved, inputs, names), ref) <= 1e-4
    tensors = [k for k in spec.permuted_tensors if sd[k].numel() > 1]
    share = sum(int((moved[k] != sd[k]).sum()) for k in tensors) / sum(sd[k].numel() for k in tensors)
    assert share > 0.5
    back = apply_permutation(spec, inverse_permutation(maps), moved)  # inverse and compose: exact group laws
    assert max(relative_error(back[k], sd[k]) for k in tensors) <= 1e-5
    twice = apply_permutation(spec, compose_permutations(maps, maps), sd)
    again = apply_permutation(spec, maps, moved)
    assert max(relative_error(twice[k], again[k]) for k in tensors) <= 1e-5


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case_id", ORTHO_CASES)
def test_weight_matching_recovers_a_transformed_copy(case_id, seed):
    _, f, _, _, spec, _ = folded(case_id)
    sd = {k: v.clone() for k, v in f.state_dict().items()}
    moved = apply_permutation(spec, random_permutation(spec, 100 + seed), sd)
    res = weight_matching(spec, sd, moved, seed=seed)
    aligned = apply_permutation(spec, res.perm, moved)
    err = math.sqrt(sum(float((aligned[k] - sd[k]).double().square().sum()) for k in spec.permuted_tensors))
    norm = math.sqrt(sum(float(sd[k].double().square().sum()) for k in spec.permuted_tensors))
    assert err / norm <= 1e-4
    if "residual" in spec.group_kinds:
        assert res.counts.get("procrustes", 0) > 0


@pytest.mark.parametrize("case_id", ["gpt2-lm-tied", "gpt_neox-causal-parallel", "vit-imgcls"])
def test_full_orthogonal_map_on_a_layernorm_stream_changes_the_function(case_id):
    """Negative control: dropping Q·1 = 1 on a LayerNorm stream is not a symmetry."""
    _, f, inputs, ref, spec, names = folded(case_id)
    wrong = spec.with_kinds({**spec.group_kinds, "residual": ORTHOGONAL})
    moved = apply_permutation(wrong, random_permutation(wrong, 0), f.state_dict())
    assert _max_rel(_changed(f, moved, inputs, names), ref) > 1e-2


@pytest.mark.parametrize("case_id", ["llama-causal-gqa2-tied", "gpt_neox-causal-parallel"])
def test_orthogonal_map_on_an_unfolded_model_changes_the_function(case_id):
    """Negative control: norm weights that are not 1 do not commute with an orthogonal map of the stream."""
    model, _, inputs, ref, _, names = folded(case_id)
    spec = spec_for(model, symmetry="orthogonal")
    moved = apply_permutation(spec, random_permutation(spec, 0), model.state_dict())
    assert _max_rel(_changed(model, moved, inputs, names), ref) > 1e-2


def test_fold_state_dict_by_hand():
    """GPT-2's ln_1 weight w folds into c_attn's input rows (W'[i, :] = w[i] · W[i, :], ln_1 weight 1) and its
    bias into c_attn's bias; ln_f's bias becomes b / w (the LM head has no bias); the tied head is untied."""
    model, _, _, _, _, _ = folded("gpt2-lm-tied")
    sd = model.state_dict()
    out, config = fold_state_dict(model.config, sd)
    w = sd["transformer.h.0.ln_1.weight"]
    assert torch.allclose(out["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.weight"] * w[:, None])
    assert torch.equal(out["transformer.h.0.ln_1.weight"], torch.ones_like(w))
    b, W = sd["transformer.h.0.ln_1.bias"], sd["transformer.h.0.attn.c_attn.weight"]  # bias -> c_attn's bias
    assert torch.allclose(out["transformer.h.0.attn.c_attn.bias"], sd["transformer.h.0.attn.c_attn.bias"] + b @ W,
                          atol=1e-6)
    assert torch.equal(out["transformer.h.0.ln_1.bias"], torch.zeros_like(b))
    wf, bf = sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"]  # lm_head has no bias: b / w
    assert torch.allclose(out["transformer.ln_f.bias"], bf / wf)
    assert config.tie_word_embeddings is False and model.config.tie_word_embeddings is True


@pytest.mark.parametrize("kind", [ORTHOGONAL, ORTHOGONAL_MEAN_FREE])
def test_procrustes_is_the_best_map_of_its_group(kind):
    """best_orthogonal's Q is in the group and beats 200 random elements of it and the identity; with Q·1 = 1
    on a cost matrix whose unconstrained optimum leaves 1 the constrained value is below the unconstrained one."""
    g = torch.Generator().manual_seed(0)
    n = 6
    cost = torch.randn(n, n, generator=g, dtype=torch.float64)
    q = best_orthogonal(kind, cost)
    assert torch.allclose(q.T @ q, torch.eye(n, dtype=torch.float64), atol=1e-10)
    if kind == ORTHOGONAL_MEAN_FREE:
        assert torch.allclose(q.sum(dim=1), torch.ones(n, dtype=torch.float64), atol=1e-10)
        assert float((cost * q).sum()) < float((cost * best_orthogonal(ORTHOGONAL, cost)).sum())
    best = float((cost * q).sum())
    others = [random_map(kind, n, g) for _ in range(200)] + [torch.eye(n, dtype=torch.float64)]
    assert all(float((cost * o).sum()) <= best + 1e-12 for o in others)


def test_mean_free_basis_and_map_checks(tmp_path):
    h = mean_free_basis(5)
    assert torch.allclose(h.T @ h, torch.eye(4, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.sum(dim=0), torch.zeros(4, dtype=torch.float64), atol=1e-12)
    _, _, _, _, spec, _ = folded("gpt2-lm-tied")
    maps = random_permutation(spec, 3)
    save_maps(str(tmp_path / "maps.safetensors"), maps)
    loaded = load_maps(str(tmp_path / "maps.safetensors"))
    assert all(torch.equal(loaded[p], maps[p]) for p in maps)
    bad = dict(maps, residual=random_map(ORTHOGONAL, spec.perm_sizes["residual"], torch.Generator().manual_seed(0)))
    with pytest.raises(SpecError, match="Q·1"):
        spec.check_permutation(bad)
    with pytest.raises(SpecError, match="orthogonal"):
        spec.check_permutation(dict(maps, residual=2 * maps["residual"]))
    assert spec.group_kinds.get("h.0.mlp", PERMUTATION) == PERMUTATION
