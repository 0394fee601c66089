"""What star-merge's ``evaluate`` modules share (numpy only; shipped beside each of them, also on the Hub):
their input features, flattening the per-token config, and the four metrics as plain functions.

The formulas are star-merge's (``star_merge.evaluation.metrics``, which computes them with torch/torchmetrics):
top-label ECE over equal-width bins ``[k/n, (k+1)/n)``, Brier ``sum_c (p_c - 1[c = y])^2`` averaged over units,
NLL with probabilities clamped at 1e-12, confidence AUROC by the rank statistic (ties count one half).
"""

import datasets
import evaluate
import numpy as np

KWARGS = """
predictions: probabilities [N, C] (rows sum to 1); config "tokens": one [T, V] array per sequence.
references: labels [N]; config "tokens": [T] targets per sequence, -100 ignored (per-token metrics).
"""


def info(metric: evaluate.Metric, description: str, extra: str = "") -> evaluate.MetricInfo:
    """The MetricInfo of one of the modules: rows of probabilities and labels, or (``"tokens"``) sequences."""
    tokens = metric.config_name == "tokens"
    row = datasets.Sequence(datasets.Value("float64"))
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description=KWARGS + extra,
        features=datasets.Features({
            "predictions": datasets.Sequence(row) if tokens else row,
            "references": datasets.Sequence(datasets.Value("int64")) if tokens else datasets.Value("int64"),
        }))


def units(predictions, references, tokens: bool):
    """``(probs [U, C] float64, labels [U])`` with ``-100`` targets dropped (tokens: sequences flattened)."""
    if tokens:
        probs = np.concatenate([np.asarray(p, dtype=np.float64).reshape(len(r), -1)
                                for p, r in zip(predictions, references)])
        labels = np.concatenate([np.asarray(r, dtype=np.int64).reshape(-1) for r in references])
    else:
        probs, labels = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.int64)
    keep = labels != -100
    return probs[keep], labels[keep]


def nll(probs, labels, eps: float = 1e-12) -> float:
    return float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], eps)).mean())


def brier(probs, labels) -> float:
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((probs - onehot) ** 2).sum(-1).mean())


def ece(probs, labels, n_bins: int = 15) -> float:
    conf, correct = probs.max(-1), (probs.argmax(-1) == labels).astype(np.float64)
    idx = np.clip(np.floor(conf * n_bins).astype(np.int64), 0, n_bins)  # a confidence of 1: its own bin
    total = 0.0
    for b in np.unique(idx):
        inside = idx == b
        total += abs(correct[inside].mean() - conf[inside].mean()) * inside.sum()
    return float(total / len(labels))


def confidence_auroc(probs, labels, score: str = "max_prob"):
    """AUROC of the confidence (top probability, or negative entropy) for telling right from wrong; None when
    every prediction is right or every one wrong."""
    if score == "max_prob":
        conf = probs.max(-1)
    else:
        conf = (probs * np.log(np.maximum(probs, 1e-300))).sum(-1)  # -entropy
    correct = probs.argmax(-1) == labels
    pos, neg = conf[correct], conf[~correct]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))
