"""Classification metrics over predicted probabilities: accuracy, NLL, ECE, Brier score, confidence AUROC.

Every function takes ``probs`` float [N, C] (rows summing to 1) and ``labels`` int [N] in [0, C).
ECE and AUROC come from torchmetrics; accuracy, NLL and Brier score are exact torch reductions.
Optional extra metrics from the Hugging Face ``evaluate`` package are loaded by name
(:func:`load_evaluate_metrics`) and fed arg-max predictions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..errors import UserError

__all__ = [
    "ECE_BINS",
    "MetricError",
    "accuracy",
    "brier_score",
    "check_predictions",
    "classification_metrics",
    "compute_evaluate_metrics",
    "confidence_auroc",
    "evaluate_metrics_on_predictions",
    "expected_calibration_error",
    "load_evaluate_metrics",
    "negative_log_likelihood",
    "predictive_entropy",
    "reliability_bins",
]

ECE_BINS = 15


class MetricError(UserError):
    """A metric cannot be computed as asked (bad predictions, unknown or unavailable metric)."""


def check_predictions(probs: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise MetricError unless ``probs`` [N, C] are finite probabilities and ``labels`` [N] index its columns."""
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise MetricError(
            f"predictions must be probs [N, C] and labels [N]; got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise MetricError("no predictions to score (0 samples); check that the evaluation split is not empty")
    if not torch.isfinite(probs).all():
        raise MetricError("predicted probabilities contain NaN or inf; the model's outputs are not finite")
    row_sums = probs.double().sum(-1)
    if (probs < 0).any() or not torch.allclose(row_sums, torch.ones_like(row_sums), atol=1e-3):
        raise MetricError("predicted probabilities must be non-negative and sum to 1 per row (apply softmax first)")
    if labels.dtype.is_floating_point or int(labels.min()) < 0 or int(labels.max()) >= probs.shape[1]:
        raise MetricError(
            f"labels must be integers in [0, {probs.shape[1]}) to match {probs.shape[1]} predicted classes"
        )


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of samples whose arg-max class is the label."""
    return float((probs.argmax(-1) == labels).double().mean())


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean ``-log p(label)`` in nats; probabilities are clamped at ``eps`` so a confident miss stays finite."""
    p = probs.double().gather(1, labels.long()[:, None]).squeeze(1)
    return float(-(p.clamp_min(eps).log()).mean())


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over samples of ``sum_c (p_c - 1[c = label])^2`` (Brier 1950; in [0, 2], 0 is perfect)."""
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[1]).double()
    return float(((probs.double() - onehot) ** 2).sum(-1).mean())


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE: ``sum_b |acc_b - conf_b| * n_b / N`` over ``n_bins`` equal-width confidence bins.

    Bins are ``[k/n, (k+1)/n)`` (torchmetrics' convention; a confidence of exactly 1 gets its own bin).
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(
        multiclass_calibration_error(
            probs.double(), labels.long(), num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
        )
    )


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Per-bin mean confidence, accuracy and count for a reliability diagram.

    Bins are ``[k/n, (k+1)/n)``, the last one closed at 1. Empty bins have ``None`` confidence/accuracy.
    """
    conf, pred = probs.double().max(-1)
    return confidence_bins(conf, (pred == labels).double(), n_bins)


def confidence_bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, list]:
    """:func:`reliability_bins` from each unit's top-label confidence and correctness (float64, one value per unit)."""
    idx = (conf * n_bins).floor().long().clamp(0, n_bins - 1)
    count = torch.bincount(idx, minlength=n_bins).double()
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    nonempty = count > 0
    return {
        "edges": [k / n_bins for k in range(n_bins + 1)],
        "confidence": [float(c / n) if e else None for c, n, e in zip(conf_sum, count, nonempty)],
        "accuracy": [float(a / n) if e else None for a, n, e in zip(acc_sum, count, nonempty)],
        "count": [int(n) for n in count],
    }


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each row of ``probs`` ([N, C] -> [N]); ``0 log 0 = 0``."""
    p = probs.double()
    return -(p * p.clamp_min(1e-300).log()).sum(-1)


def confidence_auroc(probs: torch.Tensor, labels: torch.Tensor, score: str = "max_prob") -> float | None:
    """AUROC of a confidence score for telling correct from wrong predictions.

    ``score``: ``"max_prob"`` (the top probability) or ``"entropy"`` (negative predictive entropy, so
    higher means more confident). ``None`` when every prediction is right, or every one wrong (undefined).
    """
    from torchmetrics.functional.classification import binary_auroc

    if score == "max_prob":
        confidence = probs.double().max(-1).values
    elif score == "entropy":
        confidence = -predictive_entropy(probs)
    else:
        raise MetricError(f"unknown confidence score {score!r}; use 'max_prob' or 'entropy'")
    correct = (probs.argmax(-1) == labels).long()
    if correct.min() == correct.max():
        return None
    return float(binary_auroc(confidence, correct, thresholds=None))


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Every built-in metric of one model's predictions as a JSON-ready dict."""
    check_predictions(probs, labels)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "ece": expected_calibration_error(probs, labels, n_bins),
        "brier": brier_score(probs, labels),
        "auroc_max_prob": confidence_auroc(probs, labels, "max_prob"),
        "auroc_entropy": confidence_auroc(probs, labels, "entropy"),
        "num_samples": int(labels.numel()),
    }


def load_evaluate_metrics(names: Sequence[str]) -> dict[str, Any]:
    """Load extra metrics by name with the ``evaluate`` package (cached or local scripts only when offline).

    Raises MetricError (one line) when ``evaluate`` is not installed or a metric cannot be loaded.
    """
    names = [n for n in names if n]
    if not names:
        return {}
    try:
        import evaluate
    except ImportError:
        raise MetricError(
            f"extra metric(s) {', '.join(map(repr, names))} need the `evaluate` package, which is not installed; "
            "`pip install evaluate` or drop --metrics (accuracy, NLL, ECE, Brier and AUROC are always reported)"
        ) from None
    loaded = {}
    for name in names:
        try:
            loaded[name] = evaluate.load(name)
        except Exception as e:  # noqa: BLE001 - evaluate raises many types; report one line
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise MetricError(
                f"could not load evaluate metric {name!r} ({first}); offline it must be in the evaluate cache "
                "or a local metric script path"
            ) from None
    return loaded


def compute_evaluate_metrics(metrics: Mapping[str, Any], probs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Run loaded ``evaluate`` metrics on arg-max predictions; multiclass-only metrics get ``average="macro"``.

    Each metric's result dict is flattened into ``"<name>/<key>"`` entries.
    """
    return evaluate_metrics_on_predictions(metrics, probs.argmax(-1), labels)


def evaluate_metrics_on_predictions(metrics: Mapping[str, Any], predictions: torch.Tensor,
                                    labels: torch.Tensor) -> dict[str, Any]:
    """:func:`compute_evaluate_metrics` from arg-max ``predictions`` [N] (what the streamed scores keep)."""
    if not metrics:
        return {}
    predictions = predictions.tolist()
    references = labels.tolist()
    out: dict[str, Any] = {}
    for name, metric in metrics.items():
        try:
            result = metric.compute(predictions=predictions, references=references)
        except ValueError:  # e.g. f1/precision/recall refuse multiclass input without an average
            result = metric.compute(predictions=predictions, references=references, average="macro")
        for key, value in (result or {}).items():
            out[f"{name}/{key}"] = float(value) if isinstance(value, (int, float)) else value
    return out
