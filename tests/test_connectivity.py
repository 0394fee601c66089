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


def test_interpolation_curve_reads_the_batches_a_user_has():
    """(x, y) TensorDataset batches, dicts with ``label`` and dicts with ``labels`` give one curve, equal to a hand
    computation of loss and accuracy at each t; a batch of another shape is one line naming what is needed
    (was: ``'list' object has no attribute 'items'`` deep in evaluation/engine.py)."""
    from torch.utils.data import DataLoader, TensorDataset

    from star_merge.tasks import TaskError

    cfg = StarCNN1dConfig(channels=[4, 8], num_labels=10)  # BatchNorm: the BN reset reads them too
    torch.manual_seed(0)
    a, b = (AutoModelForSequenceClassification.from_config(cfg) for _ in range(2))
    x, y = torch.randn(48, 40), torch.randint(0, 10, (48,))
    tuples = DataLoader(TensorDataset(x, y), batch_size=16)
    label = [{"input_values": x[i:i + 16], "label": y[i:i + 16]} for i in range(0, 48, 16)]
    labels = [{"input_values": x[i:i + 16], "labels": y[i:i + 16]} for i in range(0, 48, 16)]
    sd_a, sd_b = ({k: v.clone() for k, v in m.state_dict().items()} for m in (a, b))  # a is the container
    curves = [interpolation_curve(a, sd_a, sd_b, loader, num_points=3) for loader in (tuples, label, labels)]
    for curve in curves[1:]:
        assert curve.losses == pytest.approx(curves[0].losses, abs=1e-6)
        assert curve.accuracies == pytest.approx(curves[0].accuracies, abs=1e-9)
    mid = AutoModelForSequenceClassification.from_config(cfg)
    mid.load_state_dict(interpolate_state_dicts(sd_a, sd_b, 0.5))
    reset_bn_stats(mid, [{"input_values": x[i:i + 16]} for i in range(0, 48, 16)])
    with torch.no_grad():
        logits = mid(input_values=x).logits
    assert curves[0].losses[1] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), abs=1e-5)
    assert curves[0].accuracies[1] == pytest.approx((logits.argmax(-1) == y).float().mean().item())
    a.load_state_dict(sd_a)  # the endpoint given as the container's own state_dict (aliased): the same curve
    assert interpolation_curve(a, a.state_dict(), sd_b, tuples, num_points=3).losses == pytest.approx(
        curves[0].losses, abs=1e-6)
    with pytest.raises(TaskError, match=r"a list of 3; give batches as dicts .*`labels` \(or `label`\).*tuples"):
        interpolation_curve(a, sd_a, sd_b, [[x, y, y]], num_points=2)
    with pytest.raises(TaskError, match="the batch has no labels"):
        interpolation_curve(a, sd_a, sd_b, [{"input_values": x}], num_points=2)
