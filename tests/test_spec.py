"""PermutationSpec: validation, apply / inverse / compose, random permutations, block axes."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import star_merge as sm
from star_merge.spec import AxisPerm, PermutationSpec, SpecError, expand_index


def mlp_spec(sizes=(5, 7, 3)):
    sd = {
        "l0.weight": torch.randn(sizes[1], sizes[0]),
        "l0.bias": torch.randn(sizes[1]),
        "l1.weight": torch.randn(sizes[2], sizes[1]),
        "l1.bias": torch.randn(sizes[2]),
    }
    spec = PermutationSpec.from_axes(
        {"l0.weight": ("h", None), "l0.bias": ("h",), "l1.weight": (None, "h"), "l1.bias": (None,)}, sd
    )
    return spec, sd


def test_validate_names_missing_tensor():
    spec, sd = mlp_spec()
    sd = dict(sd, extra=torch.zeros(2))
    with pytest.raises(SpecError, match="does not cover tensor 'extra'"):
        spec.validate(sd)


def test_validate_names_absent_tensor_and_shape():
    spec, sd = mlp_spec()
    del sd["l1.bias"]
    with pytest.raises(SpecError, match="'l1.bias'"):
        spec.validate(sd)
    spec, sd = mlp_spec()
    sd["l1.weight"] = torch.zeros(3, 8)
    with pytest.raises(SpecError, match="shape"):
        spec.validate(sd)


def test_inconsistent_permutation_sizes_rejected():
    with pytest.raises(SpecError, match="permutation 'h' has size"):
        PermutationSpec.from_axes({"a": ("h",), "b": ("h",)}, {"a": (3,), "b": (4,)})


def test_spec_naming_unknown_tensor_rejected():
    with pytest.raises(SpecError, match="does not have"):
        PermutationSpec.from_axes({"nope": ("h",)}, {"a": (3,)})


def test_apply_leaves_input_untouched_and_returns_new_dict():
    spec, sd = mlp_spec()
    before = {k: v.clone() for k, v in sd.items()}
    out = sm.apply_permutation(spec, sm.random_permutation(spec, 1), sd)
    assert out is not sd
    assert all(torch.equal(sd[k], before[k]) for k in sd)
    assert not torch.equal(out["l0.weight"], sd["l0.weight"])


def test_random_permutation_is_seeded():
    spec, _ = mlp_spec((4, 50, 3))
    a, b, c = sm.random_permutation(spec, 3), sm.random_permutation(spec, 3), sm.random_permutation(spec, 4)
    assert torch.equal(a["h"], b["h"]) and not torch.equal(a["h"], c["h"])


def test_tied_tensors_permuted_once_and_stay_tied():
    w = torch.randn(6, 4)
    sd = {"emb": w, "head": w}
    spec = PermutationSpec.from_axes({"emb": (None, "r"), "head": (None, "r")}, sd)
    out = sm.apply_permutation(spec, sm.random_permutation(spec, 0), sd)
    assert out["emb"].data_ptr() == out["head"].data_ptr()


def test_block_and_repeat_index():
    perm = torch.tensor([1, 0])
    idx = expand_index(perm, AxisPerm("h", block=2, repeat=3))
    assert idx.tolist() == [2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9]


perm_lists = st.integers(1, 12).flatmap(lambda n: st.permutations(list(range(n))))


@settings(max_examples=60, deadline=None)
@given(p=perm_lists, q_seed=st.integers(0, 10_000), block=st.integers(1, 3), repeat=st.integers(1, 3))
def test_inverse_and_compose_properties(p, q_seed, block, repeat):
    n = len(p)
    sd = {"w": torch.randn(repeat * n * block, 3), "v": torch.randn(2, n)}
    spec = PermutationSpec.from_axes({"w": (AxisPerm("h", block, repeat), None), "v": (None, "h")}, sd)
    perm_p = {"h": torch.tensor(p)}
    perm_q = sm.random_permutation(spec, q_seed)
    # inverse undoes
    back = sm.apply_permutation(spec, sm.inverse_permutation(perm_p), sm.apply_permutation(spec, perm_p, sd))
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # composition equals sequential application (q first, then p)
    seq = sm.apply_permutation(spec, perm_p, sm.apply_permutation(spec, perm_q, sd))
    comp = sm.apply_permutation(spec, sm.compose_permutations(perm_p, perm_q), sd)
    assert all(torch.equal(seq[k], comp[k]) for k in sd)
    # composing with the inverse is the identity
    ident = sm.compose_permutations(sm.inverse_permutation(perm_p), perm_p)
    assert torch.equal(ident["h"], torch.arange(n))
