"""The one matching engine (matching/descent.py, terms.py, solvers.solve_group): single-model weight matching
and the batched population alignment are the same descent, checked against each other and against a hand
recomputation of the objective; the seams for group kinds and axis segments."""

from dataclasses import dataclass

import pytest
import torch

import star_merge as sm
from star_merge.matching.descent import DescentOptions, DescentStats, MatchingProblem, descend
from star_merge.matching.population import align_rows
from star_merge.matching.solvers import solve_group
from star_merge.matching.terms import to_blocks
from star_merge.spec import AxisPerm
from test_population import population, tiny_models


def hand_objective(spec, perm, sd_a, sd_b) -> float:
    """Σ_k ⟨A_k, π(B)_k⟩ over the permuted tensors, B permuted by apply_permutation (float64)."""
    aligned = sm.apply_permutation(spec, perm, sd_b)
    return sum(float((sd_a[k].double() * aligned[k].double()).sum()) for k in spec.permuted_tensors)


@pytest.mark.parametrize("order", ["random", "colored"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_single_model_and_batched_paths_agree_and_objective_is_the_inner_product(which, order):
    """weight_matching (a batch of one) and align_rows batched over 3 anchors (an unrelated model, a
    permuted noisy copy) and over 1 give the same permutations and sweeps; the objective weight_matching
    reports is Σ⟨A, π(B)⟩ recomputed by hand."""
    spec, layout, theta, rows = population(tiny_models()[which], 3, seed=11)
    seeds = [21, 22, 23]
    three = align_rows(spec, layout, theta, rows, [0, 1, 2], seeds, batched=True, order=order, solver="scipy")
    one = align_rows(spec, layout, theta, rows, [1], [seeds[1]], batched=True, order=order, solver="scipy")
    assert one.sweeps == [three.sweeps[1]]
    assert all(torch.equal(one.perms[0][p], three.perms[1][p]) for p in spec.perm_sizes)
    for j in range(3):
        single = sm.weight_matching(spec, layout.views(theta), layout.views(rows[j]), seed=seeds[j], restarts=0,
                                    order=order, solver="scipy")
        for p in spec.perm_sizes:
            assert torch.equal(three.perms[j][p], single.perm[p]), (j, p)
        assert three.sweeps[j] == single.iterations
        hand = hand_objective(spec, single.perm, layout.views(theta), layout.views(rows[j]))
        assert single.objective == pytest.approx(hand, rel=1e-5)
        identity = hand_objective(spec, sm.identity_permutation(spec), layout.views(theta), layout.views(rows[j]))
        assert single.objective >= identity - 1e-6 * abs(identity)
        assert single.history == sorted(single.history)  # coordinate ascent never goes down


def test_descend_on_a_batch_of_one_is_weight_matching():
    """The engine called directly on a problem of one model reproduces weight_matching's permutations,
    sweeps and per-backend counts."""
    spec, layout, theta, rows = population(tiny_models()[0], 2, seed=3)
    A, b = layout.views(theta), layout.views(rows[0])
    names = spec.permuted_tensors
    problem = MatchingProblem.build(spec, {k: A[k] for k in names}, {k: b[k][None] for k in names}, cache_elements=2**27)
    perms = {p: torch.arange(n)[None] for p, n in spec.perm_sizes.items()}
    stats = DescentStats()
    sweeps = descend(problem, perms, [torch.Generator().manual_seed(5)], DescentOptions(solver="scipy"), stats)
    ref = sm.weight_matching(spec, A, b, seed=5, restarts=0, solver="scipy")
    assert sweeps == [ref.iterations]
    assert all(torch.equal(perms[p][0], ref.perm[p]) for p in spec.perm_sizes)
    assert stats.solvers == ref.counts and sum(ref.counts.values()) > 0


def test_presolve_and_restarts_reuse_the_cache_without_changing_results():
    """presolve then the plain descent, and restarts, share one term cache across descents (rebased when a
    descent starts): same permutations as with no cache at all."""
    spec, layout, theta, rows = population(tiny_models()[2], 2, seed=7)
    A, b = layout.views(theta), layout.views(rows[1])  # a permuted noisy copy: restarts may run
    for kw in ({"presolve": True}, {"restarts": 3}):
        cached = sm.weight_matching(spec, A, b, seed=1, solver="scipy", **kw)
        fresh = sm.weight_matching(spec, A, b, seed=1, solver="scipy", cache_elements=0, **kw)
        assert cached.iterations == fresh.iterations and cached.restarts == fresh.restarts
        assert all(torch.equal(cached.perm[p], fresh.perm[p]) for p in spec.perm_sizes)
        assert cached.objective == pytest.approx(hand_objective(spec, cached.perm, A, b), rel=1e-5)


def test_solve_group_permutations_and_unknown_kind():
    """solve_group on a batch of assignment problems: each accepted map is the optimum (brute force over
    all 4! permutations), problems already optimal keep their map; an unknown group kind is refused."""
    import itertools

    g = torch.Generator().manual_seed(0)
    costs = torch.randn(5, 4, 4, generator=g, dtype=torch.float64)
    best = []
    for c in costs:
        vals = {perm: float(c[range(4), list(perm)].sum()) for perm in itertools.permutations(range(4))}
        best.append(torch.tensor(max(vals, key=vals.get)))
    current = torch.stack([torch.arange(4)] * 4 + [best[4]])  # the last one is already optimal
    stats = DescentStats()
    changed = solve_group("permutation", {"p": costs}, {"p": current}, solver="scipy", stats=stats)
    got = {j: m for _, j, m in changed}
    assert 4 not in got
    for j in range(4):
        final = got.get(j, current[j])
        assert torch.equal(final, best[j]), j
    assert stats.skipped + stats.solved + stats.solvers.get("argmax", 0) == 5
    with pytest.raises(ValueError, match="group kind 'affine'"):
        solve_group("affine", {"p": costs}, {"p": current})


@dataclass(frozen=True)
class _Segment(AxisPerm):
    offset: int = 0
    span: int = 0


def test_terms_read_an_axis_segment():
    """An entry with offset/span (a segment of a concatenated axis) contributes only its slice."""
    w = torch.randn(10, 6)
    entry = _Segment("p", offset=4, span=6)
    assert torch.equal(to_blocks(w, 0, entry, 6), to_blocks(w[4:10], 0, AxisPerm("p"), 6))
    assert torch.equal(to_blocks(w, 1, _Segment("q", block=2, offset=2, span=4), 2),
                       to_blocks(w[:, 2:6], 1, AxisPerm("q", block=2), 2))
