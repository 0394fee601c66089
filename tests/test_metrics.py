"""Metrics against hand computations and statistical ground truth."""

import math
import sys

import numpy as np
import pytest
import torch

from star_merge.evaluation.metrics import (
    MetricError,
    brier_score,
    check_predictions,
    classification_metrics,
    confidence_auroc,
    expected_calibration_error,
    load_evaluate_metrics,
    negative_log_likelihood,
    predictive_entropy,
    reliability_bins,
)


def _pairwise_auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC by counting every (positive, negative) pair; ties count one half."""
    pos, neg = score[positive], score[~positive]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def test_ece_of_calibrated_predictions_is_near_zero():
    gen = torch.Generator().manual_seed(0)
    probs = torch.distributions.Dirichlet(torch.full((5,), 0.7)).sample((100_000,))
    labels = torch.multinomial(probs, 1, generator=gen).squeeze(1)  # labels drawn from the predictions
    assert expected_calibration_error(probs, labels) < 0.01
    sharpened = torch.softmax(3 * probs.log(), -1)  # same ranking, overconfident
    assert expected_calibration_error(sharpened, labels) > 0.05


def test_ece_and_reliability_bins_match_hand_computation():
    # 10 samples at confidence 0.9 with 7 correct, 10 at 0.55 with 5 correct (3 classes)
    rows, labels = [], []
    for i in range(10):
        rows.append([0.9, 0.05, 0.05])
        labels.append(0 if i < 7 else 1)
    for i in range(10):
        rows.append([0.25, 0.55, 0.2])
        labels.append(1 if i < 5 else 2)
    probs, labels = torch.tensor(rows), torch.tensor(labels)
    expected = 0.5 * abs(0.7 - 0.9) + 0.5 * abs(0.5 - 0.55)  # = 0.125
    assert expected_calibration_error(probs, labels) == pytest.approx(expected, abs=1e-6)
    bins = reliability_bins(probs, labels, n_bins=15)
    filled = [i for i, n in enumerate(bins["count"]) if n]
    assert filled == [8, 13]  # 0.55 in [8/15, 9/15), 0.9 in [13/15, 14/15)
    assert bins["accuracy"][8] == pytest.approx(0.5) and bins["confidence"][8] == pytest.approx(0.55)
    assert bins["accuracy"][13] == pytest.approx(0.7) and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["confidence"][0] is None


def test_brier_and_nll_match_hand_computation():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = torch.tensor([0, 1])
    # (0.3² + 0.2² + 0.1²) = 0.14 and (0.1² + 0.7² + 0.6²) = 0.86
    assert brier_score(probs, labels) == pytest.approx(0.5)
    assert negative_log_likelihood(probs, labels) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert brier_score(torch.eye(3), torch.arange(3)) == 0.0


def test_confidence_auroc_hand_case_and_pairwise_count():
    # correct predictions at max-prob 0.9 and 0.6, wrong ones at 0.7 and 0.5: 3 of 4 pairs ordered -> 0.75
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.7, 0.3], [0.5 + 1e-6, 0.5 - 1e-6]])
    labels = torch.tensor([0, 0, 1, 1])
    assert confidence_auroc(probs, labels, "max_prob") == pytest.approx(0.75)

    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(400, 4, generator=gen) * 2
    probs = logits.softmax(-1)
    labels = torch.randint(0, 4, (400,), generator=gen)
    correct = (probs.argmax(-1) == labels).numpy()
    max_prob = probs.max(-1).values.double().numpy()
    neg_entropy = -predictive_entropy(probs).numpy()
    assert confidence_auroc(probs, labels, "max_prob") == pytest.approx(_pairwise_auroc(max_prob, correct), abs=1e-6)
    assert confidence_auroc(probs, labels, "entropy") == pytest.approx(_pairwise_auroc(neg_entropy, correct), abs=1e-6)
    assert confidence_auroc(torch.eye(3), torch.arange(3)) is None  # no wrong prediction: undefined


def test_entropy_and_max_prob_auroc_differ_when_rankings_differ():
    # wrong sample: max 0.6 but low entropy; correct sample: max 0.7 but high entropy
    probs = torch.tensor([[0.6, 0.4, 0.0], [0.7, 0.15, 0.15]])
    labels = torch.tensor([1, 0])
    assert confidence_auroc(probs, labels, "max_prob") == 1.0
    assert confidence_auroc(probs, labels, "entropy") == 0.0


def test_classification_metrics_and_bad_predictions():
    probs = torch.tensor([[0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 1])
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["num_samples"] == 3
    with pytest.raises(MetricError, match="sum to 1"):
        check_predictions(torch.tensor([[2.0, 1.0]]), torch.tensor([0]))
    with pytest.raises(MetricError, match=r"labels must be integers in \[0, 2\)"):
        check_predictions(probs, torch.tensor([0, 1, 2]))
    with pytest.raises(MetricError, match="0 samples"):
        check_predictions(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_extra_metrics_refused_cleanly_without_evaluate(monkeypatch):
    monkeypatch.setitem(sys.modules, "evaluate", None)  # import evaluate -> ImportError
    assert load_evaluate_metrics([]) == {}
    with pytest.raises(MetricError, match="not installed") as info:
        load_evaluate_metrics(["f1"])
    assert "\n" not in str(info.value)
