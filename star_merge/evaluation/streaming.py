"""Test-split scores accumulated batch by batch: per-unit scalars instead of [units, classes] probabilities.

Every built-in metric of :mod:`.metrics` (accuracy, NLL, ECE, Brier score, confidence AUROC, reliability bins,
arg-max predictions for ``evaluate`` metrics) is a function of five numbers per unit: the target's
probability, the top probability, the arg-max class, the unit's Brier term and its predictive entropy.
:class:`UnitStats` holds those (40 bytes a unit instead of ``4 × classes``), so a language model's test split is
scored without ever holding ``[tokens, vocab]`` on the host. The deep ensemble needs its members' probabilities
of the same batch: :func:`score_models` runs every model on each batch (all members in memory at once; one
model's [batch, block, vocab] probabilities at a time plus one running sum per ensemble) and averages the
anchors' softmax there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .metrics import ECE_BINS, MetricError, check_predictions, confidence_bins
from ..errors import UserError

__all__ = ["UnitStats", "score_models", "unit_stats"]

_P_Y, _CONF, _PRED, _BRIER, _ENTROPY = range(5)


def unit_stats(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[N, 5]`` float64 per unit: p(target), top probability, arg-max class, Brier term, entropy (nats).

    ``probs`` [N, C] are checked like :func:`.metrics.check_predictions` (rows of probabilities, labels in range).
    """
    if probs.shape[0]:
        check_predictions(probs, labels)
    p = probs.double()
    p_y = p.gather(1, labels.long()[:, None]).squeeze(1)
    conf, pred = p.max(-1)
    brier = (p * p).sum(-1) - 2 * p_y + 1  # sum_c (p_c - 1[c = y])^2, without a one-hot [N, C]
    entropy = -(p * p.clamp_min(1e-300).log()).sum(-1)
    return torch.stack([p_y, conf, pred.double(), brier, entropy], 1)


@dataclass
class UnitStats:
    """One model's per-unit scalars on a split (``stats`` [U, 5] float64, ``labels`` long [U]), dataset order."""

    stats: torch.Tensor
    labels: torch.Tensor

    @classmethod
    def from_probs(cls, probs: torch.Tensor, labels: torch.Tensor) -> "UnitStats":
        if probs.shape[0] == 0:
            check_predictions(probs, labels)  # raises: nothing to score
        return cls(unit_stats(probs, labels), labels.long())

    @property
    def predictions(self) -> torch.Tensor:
        return self.stats[:, _PRED].long()

    @property
    def confidence(self) -> torch.Tensor:
        return self.stats[:, _CONF]

    @property
    def correct(self) -> torch.Tensor:
        return self.predictions == self.labels

    def ece(self, n_bins: int = ECE_BINS) -> float:
        """Top-label ECE, the same binning as :func:`.metrics.expected_calibration_error` (torchmetrics)."""
        from torchmetrics.functional.classification import binary_calibration_error

        return float(binary_calibration_error(self.confidence.float(), self.correct.long(), n_bins=n_bins, norm="l1"))

    def reliability_bins(self, n_bins: int = ECE_BINS) -> dict[str, list]:
        """As :func:`.metrics.reliability_bins`."""
        return confidence_bins(self.confidence, self.correct.double(), n_bins)

    def _auroc(self, confidence: torch.Tensor) -> float | None:
        from torchmetrics.functional.classification import binary_auroc

        correct = self.correct.long()
        if correct.min() == correct.max():
            return None
        return float(binary_auroc(confidence, correct, thresholds=None))

    def metrics(self, n_bins: int = ECE_BINS) -> dict[str, Any]:
        """The dict of :func:`.metrics.classification_metrics`, computed from the per-unit scalars."""
        if self.labels.numel() == 0:
            raise MetricError("no predictions to score (0 samples); check that the evaluation split is not empty")
        return {
            "accuracy": float(self.correct.double().mean()),
            "nll": float(-(self.stats[:, _P_Y].clamp_min(1e-12).log()).mean()),
            "ece": self.ece(n_bins),
            "brier": float(self.stats[:, _BRIER].mean()),
            "auroc_max_prob": self._auroc(self.confidence),
            "auroc_entropy": self._auroc(-self.stats[:, _ENTROPY]),
            "num_samples": int(self.labels.numel()),
        }


def _rows_step(task, names: Sequence[str], ensembles: Mapping[str, Sequence[str]]):
    """A step over an ``nn.ModuleDict``: per example, the [*, K, 5] unit stats of every model then every
    ensemble (mean of its members' float32 softmax, summed as the members run), and the targets (``-100`` kept
    for the gather)."""
    from .engine import _rows

    rows = _rows(task)

    def step(models: nn.ModuleDict, batch):
        stats, sums, targets, keep = [], {}, None, None
        for name in names:  # one model's [B, T, C] probabilities at a time (plus the ensembles' running sums)
            lp, y = rows(models[name], batch)
            p = lp.reshape(y.shape[0], -1, lp.shape[-1]).exp()
            if targets is None:
                targets = y.reshape(y.shape[0], -1).long()
                keep = targets != -100
            stats.append(unit_stats(p[keep], targets[keep]))
            for ens, members in ensembles.items():
                if name in members:
                    sums[ens] = p if ens not in sums else sums[ens] + p
        for ens, members in ensembles.items():
            stats.append(unit_stats((sums[ens] / len(members))[keep], targets[keep]))
        out = torch.zeros(*targets.shape, len(stats), 5, dtype=torch.float64, device=targets.device)
        out[keep] = torch.stack(stats, 1)
        return out, targets

    return step


@torch.no_grad()
def score_models(models: Mapping[str, nn.Module], dataloader: Iterable, task, accelerator=None,
                 ensembles: Mapping[str, Sequence[str]] | None = None, device=None, desc: str | None = None,
                 progress: bool = False) -> dict[str, UnitStats]:
    """:class:`UnitStats` of every model in ``models`` and every ensemble (name -> member names, their mean
    softmax) over ``dataloader``, one pass, every model on each batch; gathered across processes with an
    ``accelerator`` (its loader prepared), duplicated tail examples dropped, ``-100`` targets never counted."""
    from .engine import forward_loader

    names, ensembles = list(models), dict(ensembles or {})
    container = nn.ModuleDict(dict(models))
    if accelerator is None and device is None:
        device = next(container.parameters()).device
    parts, labels = [], []
    for out, targets in forward_loader(container, dataloader, _rows_step(task, names, ensembles), accelerator,
                                       device, desc, progress):
        keep = targets != -100
        parts.append(out[keep].cpu())  # [units, K, 5]
        labels.append(targets[keep].cpu())
    if not labels or sum(len(y) for y in labels) == 0:
        raise UserError("cannot evaluate: the dataloader yielded no samples; check that the split is not empty")
    stats, labels = torch.cat(parts), torch.cat(labels)
    return {name: UnitStats(stats[:, k].contiguous(), labels) for k, name in enumerate([*names, *ensembles])}
