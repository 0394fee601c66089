"""Barriers between BatchNorm networks: statistics are recomputed at every interpolation point.

The reference curve is computed by hand: interpolate the two state dicts, recompute every BatchNorm's
statistics over the train split (tests/fixtures.py, independent of the package's reset), evaluate the
test split. Without the reset the interpolated running statistics are wrong inside the segment, and the
check below shows that this changes the losses, so the comparison can fail.
"""

from __future__ import annotations

import pytest
import torch

import star_merge  # noqa: F401
from star_merge.data import DataArguments, load_task_dataset, make_dataloader
from star_merge.evaluation import measure_barrier
from star_merge.models import StarCNN1dConfig

from fixtures import build_model, recompute_bn_statistics

NUM_POINTS = 5
BATCH = 256


@pytest.fixture(scope="module")
def bn_models():
    dataset = load_task_dataset(DataArguments(dataset_name="mnist1d", num_samples=600))
    config = StarCNN1dConfig(channels=[6, 8])
    train = make_dataloader(dataset["train"], BATCH)
    a, b = build_model(config, 1), build_model(config, 2)
    for m in (a, b):  # endpoints with their own, correct statistics
        recompute_bn_statistics(m, train)
    return dataset, config, a, b


def _hand_curve(config, sd_a, sd_b, dataset, reset: bool):
    train = make_dataloader(dataset["train"], BATCH)
    test = dataset["test"].with_format("torch")[:]
    losses = []
    for i in range(NUM_POINTS):
        t = i / (NUM_POINTS - 1)
        model = build_model(config, 0)
        model.load_state_dict({k: (1 - t) * v + t * sd_b[k] if v.is_floating_point() else v for k, v in sd_a.items()})
        if reset:
            recompute_bn_statistics(model, train)
        with torch.no_grad():
            logits = model.eval()(input_values=test["input_values"]).logits
        losses.append(float(torch.nn.functional.cross_entropy(logits, test["labels"])))
    return losses


def test_barrier_curve_recomputes_batchnorm_statistics_at_every_point(bn_models):
    dataset, config, a, b = bn_models
    sd_a, sd_b = a.state_dict(), b.state_dict()
    expected = _hand_curve(config, sd_a, sd_b, dataset, reset=True)
    without_reset = _hand_curve(config, sd_a, sd_b, dataset, reset=False)
    mid = NUM_POINTS // 2
    assert abs(without_reset[mid] - expected[mid]) > 1e-2  # skipping the reset changes the result
    result = measure_barrier(a, b, dataset, align="none", num_points=NUM_POINTS, splits=("test",),
                             batch_size=BATCH, progress=False)
    assert result.bn_reset
    assert result.curves["test"].losses == pytest.approx(expected, rel=1e-4, abs=1e-5)
    # the container's own weights are restored afterwards
    assert all(torch.equal(a.state_dict()[k], sd_a[k]) for k in sd_a)
