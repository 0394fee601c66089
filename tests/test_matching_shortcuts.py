"""The argmax shortcut (rows' maxima in distinct columns), threaded scipy batches, and ``presolve``."""

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import star_merge as sm
from star_merge.matching.population import align_rows
from star_merge.matching.solvers import available_solvers, solve_batch
from star_merge.matching.weight_matching import is_chain, is_permutation, presolve_option
from star_merge.models import StarMLPConfig
from star_merge.modeling import build_model
from fixtures import permuted_copies
from test_population import tiny_models


def test_is_permutation_batched_and_single():
    cols = torch.tensor([[2, 0, 1], [0, 0, 1], [1, 2, 0]])
    assert is_permutation(cols).tolist() == [True, False, True]
    assert is_permutation(torch.tensor([1, 0])) is True and is_permutation(torch.tensor([1, 1])) is False


def test_distinct_row_maxima_are_the_optimum():
    """The shortcut's premise against brute force: when every row's maximum lies in its own column, no
    permutation of 5 elements does better (independent reference: all 120 of them)."""
    rng = np.random.default_rng(0)
    found = 0
    for _ in range(300):
        cost = rng.normal(size=(5, 5))
        am = cost.argmax(axis=1)
        if len(set(am.tolist())) < 5:
            continue
        found += 1
        best = max(cost[np.arange(5), list(p)].sum() for p in itertools.permutations(range(5)))
        assert cost[np.arange(5), am].sum() == pytest.approx(best, abs=1e-12)
    assert found > 10


def test_threaded_scipy_batch_equals_one_by_one():
    costs = torch.randn(6, 40, 40, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    cols = solve_batch(costs, "scipy")
    for c, col in zip(costs.numpy(), cols.numpy()):
        assert col.tolist() == linear_sum_assignment(c, maximize=True)[1].tolist()


def _mlp(seed, width=48):
    cfg = StarMLPConfig(hidden_sizes=[width, width, width])
    return build_model(cfg, seed=seed).eval()


def test_argmax_shortcut_recovers_a_permuted_copy_and_is_counted():
    """A permuted copy of A: after the first solves the rows' maxima are the true units, so the
    shortcut answers (counted as 'argmax') and the copy is recovered exactly, batched and not."""
    model = _mlp(0)
    spec, layout, theta, rows, params = permuted_copies(model, (1, 2))
    for batched in (False, True):
        res = align_rows(spec, layout, theta, rows, [0, 1], [5, 6], batched=batched)
        assert res.solvers.get("argmax", 0) > 0, (batched, res.solvers)
        for i, perm in enumerate(res.perms):
            back = layout.flatten(sm.apply_permutation(spec, perm, layout.views(rows[i])))
            assert torch.equal(back, theta), batched


@pytest.mark.parametrize("seed", [0, 1])
def test_presolve_ends_in_a_local_optimum_of_the_objective(seed):
    """presolve's result is a fixed point of the plain descent on the true objective (the weighted
    descent only chooses the start), and its objective is what perm_objective says."""
    a, b = _mlp(10 + seed), _mlp(20 + seed)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    spec = sm.spec_for(a)
    res = sm.weight_matching(spec, sd_a, sd_b, seed=seed, presolve=True, restarts=0)
    again = sm.weight_matching(spec, sd_a, sd_b, seed=seed + 7, init_perm=res.perm, restarts=0)
    assert again.objective == pytest.approx(res.objective, rel=1e-6)
    assert all(torch.equal(again.perm[p], res.perm[p]) for p in res.perm)
    ref = sum(float((sd_a[k].double() * v.double()).sum())
              for k, v in sm.apply_permutation(spec, res.perm, sd_b).items() if k in spec.permuted_tensors)
    assert res.objective == pytest.approx(ref, rel=1e-5)


def test_presolve_recovers_permuted_copies():
    model = _mlp(3)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    spec = sm.spec_for(model)
    for seed in (1, 2):
        perm = sm.random_permutation(spec, seed)
        res = sm.weight_matching(spec, sd, sm.apply_permutation(spec, perm, sd), seed=seed, presolve=True)
        back = sm.apply_permutation(spec, res.perm, sm.apply_permutation(spec, perm, sd))
        assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_is_chain_on_hand_made_graphs_and_the_builtin_specs():
    """A path of two or more permutations is a chain; a star (residual stream), a triangle (ResNet), a
    disconnected pair, one lone permutation are not; star-mlp's spec is one, a ResNet's is not."""
    from star_merge.matching.terms import neighbours

    path = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    hub = {"s": ["a", "b", "c"], "a": ["s"], "b": ["s"], "c": ["s"]}
    triangle = {"a": ["b", "c"], "b": ["a", "c"], "c": ["a", "b"]}
    apart = {"a": ["b"], "b": ["a"], "c": ["d"], "d": ["c"]}
    assert is_chain(path) and is_chain({"a": ["b"], "b": ["a"]})
    assert not any(is_chain(g) for g in (hub, triangle, apart, {"a": []}))
    mlp = sm.spec_for(_mlp(0))
    assert is_chain(neighbours(mlp, mlp.perm_to_axes))
    resnet = sm.spec_for(tiny_models()[2])
    assert not is_chain(neighbours(resnet, resnet.perm_to_axes))


def test_presolve_auto_is_on_for_cold_chains_only():
    """``presolve="auto"`` (the default) gives presolve=True's result on two unrelated MLPs, the plain
    descent's from a warm start and on a ResNet; a word that is no option is a UserError."""
    from star_merge.errors import UserError

    sd_a, sd_b = _mlp(10).state_dict(), _mlp(20).state_dict()
    spec = sm.spec_for(_mlp(10))
    on = sm.weight_matching(spec, sd_a, sd_b, seed=1, presolve=True)
    off = sm.weight_matching(spec, sd_a, sd_b, seed=1, presolve=False)
    auto = sm.weight_matching(spec, sd_a, sd_b, seed=1)
    assert auto.iterations == on.iterations and all(torch.equal(auto.perm[p], on.perm[p]) for p in spec.perm_sizes)
    assert on.objective > off.objective  # the point of presolving unrelated inits (measured: every seed)
    start = sm.random_permutation(spec, 4)
    warm = sm.weight_matching(spec, sd_a, sd_b, seed=1, init_perm=start)
    plain = sm.weight_matching(spec, sd_a, sd_b, seed=1, init_perm=start, presolve=False)
    assert warm.iterations == plain.iterations and all(torch.equal(warm.perm[p], plain.perm[p]) for p in plain.perm)
    model = tiny_models()[2]
    rspec, ra = sm.spec_for(model), model.state_dict()
    rb = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in ra.items()}
    r_auto, r_off = sm.weight_matching(rspec, ra, rb, seed=0), sm.weight_matching(rspec, ra, rb, seed=0, presolve=False)
    assert r_auto.iterations == r_off.iterations and all(torch.equal(r_auto.perm[p], r_off.perm[p]) for p in r_off.perm)
    assert presolve_option("always") is True and presolve_option("never") is False and presolve_option(True) is True
    with pytest.raises(UserError, match="presolve='sometimes'"):
        sm.weight_matching(spec, sd_a, sd_b, presolve="sometimes")


def test_trainer_presolve_schedule():
    """matching_presolve: never (default: no presolve at all); first -> auto at the first alignment, plain later;
    always; a bad word refused."""
    from star_merge.errors import UserError
    from star_merge.starlight import StarlightConfig

    c = StarlightConfig(output_dir="unused")
    assert c.matching_presolve == "never" and c.presolve_at(first=True) is False
    c.matching_presolve = "first"
    assert c.presolve_at(first=True) == "auto" and c.presolve_at(first=False) is False
    c.matching_presolve = "always"
    assert c.presolve_at(first=False) == "auto"
    c.matching_presolve = "never"
    assert c.presolve_at(first=True) is False
    with pytest.raises(UserError, match="matching_presolve"):
        StarlightConfig(output_dir="unused", matching_presolve="auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["auto", "scipy", "lapjv"])
def test_cuda_population_alignment_equals_the_host_per_anchor_one(solver):
    """θ and the rows on the GPU, batched (and the cuda solver under auto when installed): the same
    permutations as weight_matching per anchor on the host, on noisy permuted copies."""
    model = _mlp(4, width=64)
    spec, layout, theta, rows, params = permuted_copies(model, range(4))
    g = torch.Generator().manual_seed(0)
    rows += 0.3 * rows.std() * torch.randn(rows.shape, generator=g)
    host = align_rows(spec, layout, theta, rows, list(range(4)), [7, 8, 9, 10], solver="scipy", batched=False)
    dev = align_rows(spec, layout, theta.cuda(), rows.cuda(), list(range(4)), [7, 8, 9, 10], solver=solver)
    for a, b in zip(host.perms, dev.perms):
        assert all(b[p].device.type == "cpu" and torch.equal(a[p], b[p]) for p in a)
    res = sm.weight_matching(spec, {k: v.cuda() for k, v in params.items()},
                             {k: v.cuda() for k, v in layout.views(rows[0]).items()}, seed=7, restarts=0,
                             solver="cuda" if solver == "auto" and "cuda" in available_solvers() else solver,
                             presolve=True)
    ref = sm.weight_matching(spec, params, layout.views(rows[0]), seed=7, restarts=0, solver="scipy", presolve=True)
    assert res.objective == pytest.approx(ref.objective, rel=1e-5)
