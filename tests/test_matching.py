"""Weight and activation matching: identity recovery, objective, determinism, bad input, real effect."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

import star_merge as sm
from star_merge.evaluation import interpolation_curve
from star_merge.data import make_dataloader
from star_merge.models import StarCNN1dConfig, StarMLPConfig
from star_merge.spec import SpecError
from star_merge.population.training import TrainArguments, build_model, train_classifier


def make(config, seed):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config).eval()


@pytest.mark.parametrize("config", [StarMLPConfig(hidden_sizes=[40, 30, 20]), StarCNN1dConfig(channels=[6, 10, 12])])
def test_recovers_permutation_and_objective_equals_self_match(config):
    model = make(config, 0)
    spec = sm.spec_for(model)
    sd = model.state_dict()
    for seed in range(3):
        perm = sm.random_permutation(spec, 100 + seed)
        permuted = sm.apply_permutation(spec, perm, sd)
        res = sm.weight_matching(spec, sd, permuted, seed=seed)
        back = sm.apply_permutation(spec, res.perm, permuted)
        assert all(torch.equal(back[k], sd[k]) for k in sd)
        self_match = sm.weight_matching(spec, sd, sd, seed=seed)
        assert math.isclose(res.objective, self_match.objective, rel_tol=1e-6)
        # the matched permutation is the inverse of the one applied
        assert all(torch.equal(res.perm[p], torch.argsort(perm[p])) for p in perm)


def test_deterministic_and_improves_objective():
    config = StarMLPConfig(hidden_sizes=[64, 64])
    a, b = make(config, 0).state_dict(), make(config, 1).state_dict()
    spec = sm.spec_for(config)
    r1, r2 = sm.weight_matching(spec, a, b, seed=5), sm.weight_matching(spec, a, b, seed=5)
    assert all(torch.equal(r1.perm[p], r2.perm[p]) for p in r1.perm)
    assert r1.objective == r2.objective
    identity = sm.weight_matching(spec, a, b, max_iter=1).history[0]
    assert r1.objective >= identity
    assert all(x <= y + 1e-9 for x, y in zip(r1.history, r1.history[1:]))  # coordinate descent never worsens


def test_bf16_weights_work():
    config = StarMLPConfig(hidden_sizes=[24, 24])
    model = make(config, 0)
    spec = sm.spec_for(model)
    sd = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
    permuted = sm.apply_permutation(spec, sm.random_permutation(spec, 3), sd)
    res = sm.weight_matching(spec, sd, permuted)
    back = sm.apply_permutation(spec, res.perm, permuted)
    assert all(torch.equal(back[k], sd[k]) for k in sd)


def test_bad_inputs_name_the_tensor():
    config = StarMLPConfig(hidden_sizes=[8, 8])
    spec = sm.spec_for(config)
    a = make(config, 0).state_dict()
    b = dict(make(config, 1).state_dict())
    with pytest.raises(SpecError, match="model B.*'layers.0.weight'.*shape"):
        sm.weight_matching(spec, a, {**b, "layers.0.weight": torch.zeros(9, 40)})
    with pytest.raises(SpecError, match="model B.*'extra'"):
        sm.weight_matching(spec, a, {**b, "extra": torch.zeros(1)})
    with pytest.raises(SpecError, match="model A.*'classifier.bias'"):
        sm.weight_matching(spec, {k: v for k, v in a.items() if k != "classifier.bias"}, b)
    with pytest.raises(SpecError, match="'layers.1.bias'.*NaN"):
        sm.weight_matching(spec, a, {**b, "layers.1.bias": torch.full((8,), float("nan"))})
    with pytest.raises(SpecError, match="'layers.0.weight'.*floating"):
        sm.weight_matching(spec, a, {**b, "layers.0.weight": torch.zeros(8, 40, dtype=torch.long)})


def test_activation_matching_recovers_permutation(mnist1d):
    config = StarCNN1dConfig(channels=[8, 12])
    model = make(config, 0)
    spec = sm.spec_for(model)
    perm = sm.random_permutation(spec, 7)
    other = make(config, 0)
    other.load_state_dict(sm.apply_permutation(spec, perm, model.state_dict()))
    loader = make_dataloader(mnist1d["test"], 250)
    res = sm.activation_matching(spec, model, other, loader, progress=False)
    assert all(torch.equal(res.perm[p], torch.argsort(perm[p])) for p in perm)


def test_weight_matching_reduces_barrier_of_trained_models(mnist1d):
    """Real effect: independently trained MLPs are far closer to linearly connected after matching."""
    config = StarMLPConfig(hidden_sizes=[256, 256])
    args = TrainArguments(num_train_epochs=8, learning_rate=2e-3)
    a, _ = train_classifier(build_model(config, 0), mnist1d, args, seed=0, progress=False)
    b, _ = train_classifier(build_model(config, 1), mnist1d, args, seed=1, progress=False)
    spec = sm.spec_for(a)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    aligned = sm.apply_permutation(spec, sm.weight_matching(spec, sd_a, sd_b).perm, sd_b)
    loader = make_dataloader(mnist1d["test"], 1000)
    naive = interpolation_curve(build_model(config, 0), sd_a, sd_b, loader).loss_barrier
    matched = interpolation_curve(build_model(config, 0), sd_a, aligned, loader).loss_barrier
    assert naive > 0.1
    assert matched < 0.5 * naive
