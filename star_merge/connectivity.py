"""Linear mode connectivity: interpolation between state dicts, BatchNorm resets, loss/accuracy barriers.

Barrier definitions follow STARLIGHT.md: on the grid t_0=0 .. t_{K-1}=1,

    loss barrier     = max(0, max_t [ L(t) - ((1-t) L(0) + t L(1)) ])
    accuracy barrier = max(0, max_t [ ((1-t) A(0) + t A(1)) - A(t) ])

with accuracies as fractions in [0, 1].
"""

from __future__ import annotations

import math

from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "interpolate_state_dicts",
    "has_batchnorm",
    "reset_bn_stats",
    "evaluate_loss_accuracy",
    "loss_barrier",
    "accuracy_barrier",
    "InterpolationCurve",
    "interpolation_curve",
]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def interpolate_state_dicts(
    sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1-t)·A + t·B`` for floating tensors; integer tensors (e.g. ``num_batches_tracked``) copied from A."""
    if set(sd_a) != set(sd_b):
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise ValueError(f"state dicts have different tensors (e.g. {diff[0]!r}); are they the same architecture?")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise ValueError(f"tensor {k!r} has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B")
        out[k] = torch.lerp(a, b.to(a.dtype), float(t)) if a.is_floating_point() else a.clone()
    return out


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, _BN_TYPES) for m in model.modules())


def _model_inputs(batch: Mapping[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


@torch.no_grad()
def reset_bn_stats(model: nn.Module, dataloader: Iterable, max_batches: int | None = None, device=None) -> nn.Module:
    """Recompute every BatchNorm's running mean/var over ``dataloader`` as a cumulative (equal-weight) average.

    The model is returned in eval mode. Models without BatchNorm are returned unchanged.
    """
    bns = [m for m in model.modules() if isinstance(m, _BN_TYPES)]
    if not bns:
        return model.eval()
    device = device or next(model.parameters()).device
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
    model.train()
    seen = 0
    for i, batch in enumerate(dataloader):
        if max_batches is not None and i >= max_batches:
            break
        model(**_model_inputs(batch, device))
        seen += 1
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    if seen == 0:
        raise ValueError("cannot reset BatchNorm statistics: the dataloader yielded no batches")
    return model.eval()


@torch.no_grad()
def evaluate_loss_accuracy(model: nn.Module, dataloader: Iterable, device=None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (fraction) of ``model`` in eval mode over ``dataloader``."""
    device = device or next(model.parameters()).device
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in dataloader:
        labels = batch["labels"].to(device)
        logits = model(**_model_inputs(batch, device)).logits.float()
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(-1) == labels).sum())
        n += labels.numel()
    if n == 0:
        raise ValueError("cannot evaluate: the dataloader yielded no samples")
    return total_loss / n, correct / n


def _chord(ts: Sequence[float], values: Sequence[float]) -> list[float]:
    return [(1 - t) * values[0] + t * values[-1] for t in ts]


def loss_barrier(ts: Sequence[float], losses: Sequence[float]) -> float:
    """``max(0, max_t L(t) - ((1-t) L(0) + t L(1)))``."""
    gaps = [l - c for l, c in zip(losses, _chord(ts, losses))]
    return float("nan") if any(math.isnan(g) for g in gaps) else max(0.0, max(gaps))  # NaN is not "no barrier"


def accuracy_barrier(ts: Sequence[float], accuracies: Sequence[float]) -> float:
    """``max(0, max_t ((1-t) A(0) + t A(1)) - A(t))``."""
    gaps = [c - a for a, c in zip(accuracies, _chord(ts, accuracies))]
    return float("nan") if any(math.isnan(g) for g in gaps) else max(0.0, max(gaps))


@dataclass
class InterpolationCurve:
    """Loss and accuracy along the straight line from A (t=0) to B (t=1)."""

    ts: list[float]
    losses: list[float]
    accuracies: list[float]

    @property
    def loss_barrier(self) -> float:
        return loss_barrier(self.ts, self.losses)

    @property
    def accuracy_barrier(self) -> float:
        return accuracy_barrier(self.ts, self.accuracies)

    def to_dict(self) -> dict:
        return {**asdict(self), "loss_barrier": self.loss_barrier, "accuracy_barrier": self.accuracy_barrier}


def interpolation_curve(
    model: nn.Module,
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    dataloader: Iterable,
    num_points: int = 11,
    reset_bn: bool | None = None,
    bn_dataloader: Iterable | None = None,
    bn_max_batches: int | None = None,
    device=None,
    progress: bool = False,
) -> InterpolationCurve:
    """Evaluate ``model`` loaded with ``(1-t)·A + t·B`` at ``num_points`` evenly spaced t in [0, 1].

    ``model`` is only a container (its weights are overwritten). ``reset_bn`` (default: whether the model
    has BatchNorm) recomputes BN statistics at every point over ``bn_dataloader`` (default: the
    evaluation dataloader) — without it, barriers between BN networks are grossly overstated. B should
    already be aligned to A (weight matching) when measuring modulo permutation.
    """
    if num_points < 2:
        raise ValueError("num_points must be >= 2")
    if reset_bn is None:
        reset_bn = has_batchnorm(model)
    ts = [i / (num_points - 1) for i in range(num_points)]
    losses, accs = [], []
    for t in tqdm(ts, desc="interpolating", disable=not progress, leave=False):
        model.load_state_dict(interpolate_state_dicts(sd_a, sd_b, t))
        if reset_bn:
            reset_bn_stats(model, bn_dataloader if bn_dataloader is not None else dataloader, bn_max_batches, device)
        loss, acc = evaluate_loss_accuracy(model, dataloader, device)
        losses.append(loss)
        accs.append(acc)
    return InterpolationCurve(ts, losses, accs)
