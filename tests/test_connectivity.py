"""Interpolation, BatchNorm statistics reset, and the barrier definitions."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification

from star_merge.evaluation import (
    accuracy_barrier,
    interpolate_state_dicts,
    interpolation_curve,
    loss_barrier,
    reset_bn_stats,
)
from star_merge.data import make_dataloader
from star_merge.models import StarCNN1dConfig, StarMLPConfig


def test_barrier_definitions_hand_computed():
    ts = [0.0, 0.5, 1.0]
    # chord at t=0.5 is (1 + 3) / 2 = 2; L(0.5) = 2.75 -> 0.75
    assert loss_barrier(ts, [1.0, 2.75, 3.0]) == pytest.approx(0.75)
    # below the chord: no barrier
    assert loss_barrier(ts, [1.0, 1.5, 3.0]) == 0.0
    # accuracies: chord 0.85, path 0.6 -> 0.25
    assert accuracy_barrier(ts, [0.9, 0.6, 0.8]) == pytest.approx(0.25)
    assert accuracy_barrier(ts, [0.9, 0.95, 0.8]) == 0.0


def test_interpolation_lerps_floats_and_copies_integers():
    a = {"w": torch.zeros(3), "n": torch.tensor(5)}
    b = {"w": torch.ones(3) * 4, "n": torch.tensor(9)}
    mid = interpolate_state_dicts(a, b, 0.25)
    assert torch.equal(mid["w"], torch.ones(3)) and int(mid["n"]) == 5
    with pytest.raises(ValueError, match="different tensors"):
        interpolate_state_dicts(a, {"w": b["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate_state_dicts(a, {"w": torch.ones(4), "n": b["n"]}, 0.5)


def test_reset_bn_is_cumulative_average(mnist1d):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(StarCNN1dConfig(channels=[4, 4]))
    loader = make_dataloader(mnist1d["train"].select(range(300)), 100)
    reset_bn_stats(model, loader)
    # recompute the first BN's statistics by hand: mean over batches of batch means (equal weights)
    feats = []
    hook = model.convs[0].register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    with torch.no_grad():
        for batch in loader:
            model(input_values=batch["input_values"])
    hook.remove()
    expect = torch.stack([f.mean(dim=(0, 2)) for f in feats]).mean(0)
    assert torch.allclose(model.norms[0].running_mean, expect, atol=1e-5)
    assert not model.training and model.norms[0].momentum == 0.1


def test_self_interpolation_has_zero_barrier(mnist1d):
    torch.manual_seed(0)
    for config in (StarMLPConfig(hidden_sizes=[32]), StarCNN1dConfig(channels=[4, 4])):
        model = AutoModelForSequenceClassification.from_config(config)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        curve = interpolation_curve(model, sd, sd, make_dataloader(mnist1d["test"], 500), num_points=5)
        assert curve.loss_barrier == pytest.approx(0.0, abs=1e-6)
        assert curve.accuracy_barrier == pytest.approx(0.0, abs=1e-9)
        assert max(curve.losses) - min(curve.losses) < 1e-5


class Logistic(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(40, 10)

    def forward(self, input_values):
        return type("Out", (), {"logits": self.linear(input_values)})()


def test_convex_model_has_zero_loss_barrier(mnist1d):
    """Cross-entropy of a linear softmax classifier is convex in its weights: no barrier on any chord."""
    g = torch.Generator().manual_seed(0)
    a = {"linear.weight": torch.randn(10, 40, generator=g), "linear.bias": torch.randn(10, generator=g)}
    b = {"linear.weight": torch.randn(10, 40, generator=g), "linear.bias": torch.randn(10, generator=g)}
    curve = interpolation_curve(Logistic(), a, b, make_dataloader(mnist1d["test"], 1000), num_points=11)
    assert curve.loss_barrier == 0.0
    chord = [(1 - t) * curve.losses[0] + t * curve.losses[-1] for t in curve.ts]
    assert all(l <= c + 1e-6 for l, c in zip(curve.losses, chord))
