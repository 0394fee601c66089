"""Concatenated axes (``spec.Segments``): checks, apply_permutation, weight matching (single, batched, cached),
activation matching. References: hand-computed indices, and the same network with every concatenated tensor
split into one tensor per segment (plain axes), which the engine already handled before segments existed."""

from __future__ import annotations

import pytest
import torch

import star_merge as sm
from star_merge.errors import UserError
from star_merge.matching.population import align_rows
from star_merge.models import StarCifarDenseNetConfig
from star_merge.modeling import build_model
from star_merge.spec import AxisPerm, PermutationSpec, Segments, SpecError
from fixtures import permuted_copies


def test_apply_permutation_on_segments_matches_hand_indexing():
    w = torch.arange(4 * 9, dtype=torch.float32).reshape(4, 9)
    spec = PermutationSpec.from_axes(
        {"w": ("rows", Segments(2, ("p", 3), AxisPerm("q", block=2, span=4))), "b": ("rows",)},
        {"w": w, "b": torch.zeros(4)})
    assert spec.perm_sizes == {"rows": 4, "p": 3, "q": 2}
    perm = {"rows": torch.tensor([3, 0, 2, 1]), "p": torch.tensor([2, 0, 1]), "q": torch.tensor([1, 0])}
    out = sm.apply_permutation(spec, perm, {"w": w, "b": torch.arange(4.0)})
    cols = [0, 1] + [2 + 2, 2 + 0, 2 + 1] + [5 + 2, 5 + 3, 5 + 0, 5 + 1]  # fixed, p's segment, q's blocks of 2
    assert torch.equal(out["w"], w[[3, 0, 2, 1]][:, cols])
    assert torch.equal(out["b"], torch.tensor([3.0, 0.0, 2.0, 1.0]))
    entries = sorted((k, ax, ap.offset, ap.span) for p in ("p", "q") for k, ax, ap in spec.perm_to_axes[p])
    assert entries == [("w", 1, 2, 3), ("w", 1, 5, 4)]


@pytest.mark.parametrize("axes, message", [
    ((Segments(2, ("p", 3)),), "segments sum to 5"),
    ((Segments(("p", 3), AxisPerm("q", block=2, span=3)),), "not a multiple"),
    ((AxisPerm("p", span=6),), "go in Segments"),
])
def test_bad_segments_name_the_tensor(axes, message):
    with pytest.raises(SpecError, match=message) as e:
        PermutationSpec.from_axes({"feat.weight": axes}, {"feat.weight": (6,)})
    assert "feat.weight" in str(e.value) or "Segments" in str(e.value)
    assert isinstance(e.value, UserError)


def test_segment_sizes_must_agree_across_tensors():
    with pytest.raises(SpecError, match="'a' has size 3 .* size 4 on tensor 'y'"):
        PermutationSpec.from_axes({"x": (Segments(("a", 3), 1),), "y": ("a",)}, {"x": (4,), "y": (4,)})
    with pytest.raises(SpecError, match="needs its span"):
        Segments(AxisPerm("a"))
    with pytest.raises(SpecError, match="a segment is"):
        Segments("a")


def _densenet(seed, **kw):
    cfg = StarCifarDenseNetConfig(**{"depth": 16, "growth_rate": 3, "image_size": 8, **kw})
    return build_model(cfg, seed=seed).eval()


def split_segments(spec: PermutationSpec, sd):
    """The same tensors with every Segments axis cut into one tensor per segment (plain entries)."""
    axes, tensors = {}, {}
    for k, entries in spec.axes_to_perm.items():
        seg = [i for i, e in enumerate(entries) if isinstance(e, Segments)]
        if not seg:
            axes[k], tensors[k] = entries, sd[k]
            continue
        (i,) = seg
        start = 0
        for j, part in enumerate(entries[i].parts):
            span = part if isinstance(part, int) else part.span
            piece = None if isinstance(part, int) else AxisPerm(part.perm, block=part.block, repeat=part.repeat)
            axes[f"{k}#{j}"] = entries[:i] + (piece,) + entries[i + 1:]
            tensors[f"{k}#{j}"] = sd[k].narrow(i, start, span)
            start += span
    return PermutationSpec.from_axes(axes, tensors), tensors


def test_densenet_spec_has_concatenated_axes():
    model = _densenet(0)
    spec = sm.spec_for(model)
    entry = spec.axes_to_perm["blocks.1.1.conv1.weight"][1]
    assert isinstance(entry, Segments)
    assert [(p.perm, p.offset, p.span) for p in entry.permuted] == [("transition0", 0, 6), ("blocks.1.0", 6, 3)]  # stem 6 + 2x3 -> 6
    assert isinstance(spec.axes_to_perm["classifier.weight"][1], Segments)


@pytest.mark.parametrize("cache", [0, 2**27])
def test_weight_matching_with_segments_equals_the_split_network(cache):
    """Two independent inits (a real descent: cached terms, rank updates, restarts off): the Segments spec and
    the split spec give the same permutations and objective."""
    a, b = (_densenet(s).state_dict() for s in (1, 2))
    spec = sm.spec_for(_densenet(0))
    res = sm.weight_matching(spec, a, b, seed=4, restarts=0, cache_elements=cache)
    split_spec, split_a = split_segments(spec, a)
    _, split_b = split_segments(spec, b)
    ref = sm.weight_matching(split_spec, split_a, split_b, seed=4, restarts=0, cache_elements=cache)
    assert res.iterations > 1
    assert all(torch.equal(res.perm[p], ref.perm[p]) for p in ref.perm)
    assert res.objective == pytest.approx(ref.objective, rel=1e-6)
    aligned = sm.apply_permutation(spec, res.perm, b)
    direct = sum(float((a[k].double() * aligned[k].double()).sum()) for k in spec.permuted_tensors)
    assert res.objective == pytest.approx(direct, rel=1e-6)


def test_batched_alignment_recovers_permuted_copies_through_segments():
    model = _densenet(3)
    spec, layout, theta, rows, params = permuted_copies(model, (1, 2, 3))
    for batched in (False, True):
        res = align_rows(spec, layout, theta, rows, [0, 1, 2], [5, 6, 7], batched=batched)
        for i, perm in enumerate(res.perms):
            back = layout.flatten(sm.apply_permutation(spec, perm, layout.views(rows[i])))
            assert torch.equal(back, theta), (batched, i)


def test_activation_matching_recovers_a_permuted_densenet():
    model = _densenet(5)
    spec = sm.spec_for(model)
    sd = model.state_dict()
    perm = sm.random_permutation(spec, seed=9)
    copy = _densenet(6)
    copy.load_state_dict(sm.apply_permutation(spec, perm, sd))
    g = torch.Generator().manual_seed(0)
    loader = [{"pixel_values": torch.randn(16, 3, 8, 8, generator=g)} for _ in range(4)]
    res = sm.activation_matching(spec, model, copy, loader, progress=False)
    back = sm.apply_permutation(spec, res.perm, copy.state_dict())
    assert all(torch.equal(back[k], sd[k]) for k in sd)
