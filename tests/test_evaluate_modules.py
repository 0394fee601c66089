"""star-merge's metrics as `evaluate` modules shipped in the package: loaded offline from their local path, equal
to the report's implementation (torch / torchmetrics, star_merge.evaluation.metrics) to 1e-6, per example and per
token (-100 targets ignored)."""

import pytest
import torch

evaluate = pytest.importorskip("evaluate", reason="the `evaluate` dependency is not installed in this environment")

import star_merge  # noqa: E402
from star_merge.evaluation.metrics import classification_metrics  # noqa: E402
from star_merge.metrics import METRIC_NAMES  # noqa: E402

KEYS = {"nll": ["nll"], "ece": ["ece"], "brier": ["brier"], "confidence_auroc": ["auroc_max_prob", "auroc_entropy"]}
PROB_METRICS = tuple(KEYS)


def _predictions(n=300, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    labels = torch.where(torch.rand(n, generator=g) < 0.6, logits.argmax(-1), torch.randint(0, c, (n,), generator=g))
    return logits.softmax(-1), labels


def test_modules_load_offline_and_equal_the_reports_metrics(monkeypatch):
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    probs, labels = _predictions()
    ref = classification_metrics(probs, labels)
    assert 0.3 < ref["accuracy"] < 0.9  # right and wrong predictions: every metric is defined
    assert set(METRIC_NAMES) == set(PROB_METRICS) | {"accuracy"}
    accuracy = evaluate.load(star_merge.metric_path("accuracy"))
    assert accuracy.compute(predictions=probs.argmax(-1).tolist(), references=labels.tolist())["accuracy"] == \
        pytest.approx(ref["accuracy"], abs=1e-12)
    for name in PROB_METRICS:
        got = evaluate.load(star_merge.metric_path(name)).compute(predictions=probs.tolist(),
                                                                  references=labels.tolist())
        for key in KEYS[name]:
            assert got[key] == pytest.approx(ref[key], abs=1e-6), (name, key)
    ece = evaluate.load(star_merge.metric_path("ece"))
    assert ece.compute(predictions=probs.tolist(), references=labels.tolist(), n_bins=5)["ece"] == pytest.approx(
        classification_metrics(probs, labels, n_bins=5)["ece"], abs=1e-6)
    with pytest.raises(ValueError, match="no star-merge metric 'f1'"):
        star_merge.metric_path("f1")


def test_per_token_config_equals_the_metrics_of_the_flattened_tokens():
    probs, labels = _predictions(n=4 * 9, c=11, seed=1)
    labels[::5] = -100  # padding / unmasked positions: never targets
    seq_probs, seq_labels = probs.reshape(4, 9, 11), labels.reshape(4, 9)
    keep = labels != -100
    ref = classification_metrics(probs[keep], labels[keep])
    for name in PROB_METRICS:
        got = evaluate.load(star_merge.metric_path(name), "tokens").compute(
            predictions=[p.tolist() for p in seq_probs], references=[r.tolist() for r in seq_labels])
        for key in KEYS[name]:
            assert got[key] == pytest.approx(ref[key], abs=1e-6), (name, key)
