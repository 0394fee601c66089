"""merge_models: MergeMany against a hand-run loop, cycle consistency, the reference average, permuted copies."""

import itertools

import pytest
import torch

from star_merge import apply_permutation, random_permutation, spec_for, weight_matching
from star_merge.matching.cycle import relaxed_objective
from star_merge.matching.merge import MergeError, merge_models, universe_objective
from star_merge.matching.terms import apply_maps
from star_merge.models.cnn1d import StarCNN1dConfig, StarCNN1dForClassification
from star_merge.models.mlp import StarMLPConfig, StarMLPForClassification


def mlps(n=4, hidden=(12, 10)):
    cfg = StarMLPConfig(input_size=8, hidden_sizes=list(hidden), num_labels=3)
    out = []
    for s in range(n):
        torch.manual_seed(100 + s)
        out.append(StarMLPForClassification(cfg).eval())
    return out


def hand_mergemany(spec, sds, seed=0, max_iter=100):
    """git re-basin Algorithm 3 written out: each member, in a seeded random order, weight-matched to the plain
    mean of the others (computed here by hand) until a sweep changes no permutation."""
    perms = [{p: torch.arange(n) for p, n in spec.perm_sizes.items()} for _ in sds]
    gen = torch.Generator().manual_seed(seed)
    for sweep in range(max_iter):
        changed = False
        for i in torch.randperm(len(sds), generator=gen).tolist():
            others = [apply_permutation(spec, perms[j], sds[j]) for j in range(len(sds)) if j != i]
            mean = {k: sum(o[k].double() for o in others).div(len(others)).to(sds[i][k].dtype) if sds[i][k].is_floating_point()
                    else sds[0][k] for k in sds[i]}
            res = weight_matching(spec, mean, sds[i], seed=seed + 7919 * sweep + i, init_perm=perms[i])
            if any(not torch.equal(res.perm[p], perms[i][p]) for p in perms[i]):
                changed, perms[i] = True, res.perm
        if not changed:
            break
    return perms


def test_mergemany_equals_hand_loop():
    models = mlps(4)
    spec = spec_for(models[0])
    sds = [m.state_dict() for m in models]
    merged, record = merge_models(models, method="mergemany", seed=3)
    expected = hand_mergemany(spec, sds, seed=3)
    assert record.iterations >= 2  # at least one sweep changed something, then one confirmed the fixed point
    for got, want in zip(record.perms, expected):
        assert all(torch.equal(got[p], want[p]) for p in want)
    aligned = [apply_permutation(spec, p, sd) for p, sd in zip(expected, sds)]
    for k, v in merged.items():
        torch.testing.assert_close(v, sum(a[k] for a in aligned) / 4, rtol=1e-6, atol=1e-7)
    # each re-alignment maximises member i's share of Σ_{i<j} <θ_i, θ_j>: the objective never drops
    assert all(b >= a * (1 - 1e-9) for a, b in zip(record.history, record.history[1:]))


def pairwise_from_perms(perms, i, j):
    """i's frame -> j's frame through the universe, written out: θ_i in the universe is θ_i[perm_i]; back to
    j's frame by the inverse of perm_j (argsort)."""
    return {p: perms[i][p][torch.argsort(perms[j][p])] for p in perms[i]}


@pytest.mark.parametrize("method", ["cycle", "mergemany", "reference"])
def test_maps_compose_to_identity_on_every_triple(method):
    models = mlps(4)
    spec = spec_for(models[0])
    sds = [m.state_dict() for m in models]
    _, record = merge_models(models, method=method)
    for i, j, k in itertools.permutations(range(4), 3):
        back = apply_permutation(spec, record.pairwise(k, i), apply_permutation(
            spec, record.pairwise(j, k), apply_permutation(spec, record.pairwise(i, j), sds[i])))
        assert all(torch.equal(back[n], sds[i][n]) for n in sds[i])
        assert all(torch.equal(record.pairwise(i, j)[p], pairwise_from_perms(record.perms, i, j)[p]) for p in spec.perm_sizes)
        # the map i -> j takes θ_i to where θ_j's units are: both land on the same universe tensors
        in_j = apply_permutation(spec, record.pairwise(i, j), sds[i])
        via_j = apply_permutation(spec, record.perms[j], in_j)
        direct = apply_permutation(spec, record.perms[i], sds[i])
        assert all(torch.equal(via_j[n], direct[n]) for n in sds[i])


def test_independent_pairwise_matching_is_not_cycle_consistent():
    """Negative control: three separate pairwise matchings of unrelated models do not compose to the identity."""
    models = mlps(3, hidden=(24, 20))
    spec = spec_for(models[0])
    sds = [m.state_dict() for m in models]
    m01 = weight_matching(spec, sds[1], sds[0]).perm  # 0's frame -> 1's
    m12 = weight_matching(spec, sds[2], sds[1]).perm
    m20 = weight_matching(spec, sds[0], sds[2]).perm
    back = apply_permutation(spec, m20, apply_permutation(spec, m12, apply_permutation(spec, m01, sds[0])))
    assert not all(torch.equal(back[n], sds[0][n]) for n in sds[0])


def test_reference_is_matching_to_member_zero_then_mean():
    models = mlps(3)
    spec = spec_for(models[0])
    sds = [m.state_dict() for m in models]
    merged, record = merge_models(models, method="reference", weights=[2.0, 1.0, 1.0])
    aligned = [sds[0]] + [apply_permutation(spec, weight_matching(spec, sds[0], sds[i], seed=i).perm, sds[i])
                          for i in (1, 2)]
    for k in merged:
        torch.testing.assert_close(merged[k], 0.5 * aligned[0][k] + 0.25 * aligned[1][k] + 0.25 * aligned[2][k])
    assert record.weights == [0.5, 0.25, 0.25]


@pytest.mark.parametrize("method", ["cycle", "mergemany", "reference"])
def test_permuted_copies_merge_back_to_the_model(method):
    model = mlps(1, hidden=(16, 12))[0]
    spec = spec_for(model)
    sd = model.state_dict()
    copies = [sd] + [apply_permutation(spec, random_permutation(spec, seed=s), sd) for s in (1, 2, 3)]
    merged, record = merge_models(copies, method=method, spec=spec)
    x = torch.randn(5, 8)
    out = StarMLPForClassification(model.config).eval()
    out.load_state_dict(merged)
    torch.testing.assert_close(out(input_values=x).logits, model(input_values=x).logits, rtol=1e-5, atol=1e-6)


def test_relaxed_objective_at_permutation_matrices_is_the_universe_objective():
    """The Frank-Wolfe objective on matrices eye[p] equals the index-permuted one (matrix products vs index selection),
    also on a BatchNorm CNN whose classifier permutes channel blocks."""
    torch.manual_seed(0)
    cfg = StarCNN1dConfig(input_size=12, channels=[4, 6], kernel_size=3, num_labels=3)
    models = [StarCNN1dForClassification(cfg) for _ in range(3)]
    spec = spec_for(models[0])
    sds = [m.state_dict() for m in models]
    perms = [random_permutation(spec, seed=s) for s in range(3)]
    w = [0.2, 0.3, 0.5]
    names = [k for k in spec.permuted_tensors if sds[0][k].is_floating_point()]
    mats = [{p: torch.eye(len(v), dtype=torch.float64)[v] for p, v in q.items()} for q in perms]
    relaxed = float(relaxed_objective(spec, [{k: sd[k].double() for k in names} for sd in sds], mats, w))
    aligned = [apply_permutation(spec, p, sd) for p, sd in zip(perms, sds)]
    assert relaxed == pytest.approx(universe_objective(spec, aligned, w), rel=1e-10)
    for k in names:
        torch.testing.assert_close(apply_maps(sds[1][k].double(), spec.axes_to_perm[k], mats[1]),
                                   aligned[1][k].double())


def test_cycle_beats_or_matches_reference_objective_and_is_deterministic():
    models = mlps(4, hidden=(20, 16))
    _, ref = merge_models(models, method="reference")
    a, cyc = merge_models(models, method="cycle")
    b, _ = merge_models(models, method="cycle")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cyc.objective >= ref.objective  # it starts from the reference alignment and keeps it unless beaten
    assert cyc.history == sorted(cyc.history)  # Frank-Wolfe with line search never lowers the relaxed objective


def test_bad_requests_are_user_errors():
    models = mlps(2)
    with pytest.raises(MergeError, match="unknown merge method"):
        merge_models(models, method="zipit")
    with pytest.raises(MergeError, match="at least two"):
        merge_models(models[:1])
    with pytest.raises(MergeError, match="weights"):
        merge_models(models, weights=[1.0])
    with pytest.raises(MergeError, match=">= 0"):
        merge_models(models, weights=[1.0, -1.0])


def test_starlight_starts_from_the_anchors_merge(tmp_path, mnist1d):
    """``init="merge:reference"``: θ0 is merge_models of the anchors (their trainable tensors), before any step."""
    from fixtures import make_trainer, tiny_arguments

    from star_merge.errors import UserError
    from star_merge.modeling import build_model

    config, _, pop, _ = tiny_arguments(str(tmp_path / "run"), init="merge:reference")
    model_config = pop.build_config()
    anchors = [(f"anchor-{i}", build_model(model_config, 10 + i).state_dict()) for i in range(3)]
    trainer = make_trainer(config, model_config, anchors, mnist1d)
    expected, _ = merge_models([build_model(model_config, 10 + i) for i in range(3)], method="reference")
    for k, v in trainer.model.state_dict().items():
        torch.testing.assert_close(v.cpu(), expected[k])
    with pytest.raises(UserError, match="merge:METHOD"):
        tiny_arguments(str(tmp_path / "bad"), init="merge:zipit")


def _one_case_per_family():
    from test_adapters import CASES

    seen, out = set(), []
    for c in CASES:
        family = c.config().model_type
        if family not in seen:
            seen.add(family)
            out.append(c.id)
    return out


@pytest.mark.parametrize("case_id", _one_case_per_family())
def test_every_family_merges_permuted_copies_back(case_id):
    """Each adapter family (transformers and vision): MergeMany and the cycle-consistent merge of three permuted
    copies compute the original model's outputs (LMs: the per-token logits)."""
    from test_adapters import RTOL, prepared, relative_error, run

    p = prepared(case_id)
    copies = [p.state_dict] + [apply_permutation(p.spec, random_permutation(p.spec, seed=s), p.state_dict)
                               for s in (1, 2)]
    for method in ("mergemany", "cycle"):
        merged, _ = merge_models(copies, method=method, spec=p.spec, max_iter=20)
        try:
            p.model.load_state_dict(merged)
            got = run(p.model, p.inputs, p.reference.keys())
        finally:
            p.model.load_state_dict(p.state_dict)
        for name in p.case.outputs:
            assert relative_error(got[name], p.reference[name]) < RTOL, (method, name)
