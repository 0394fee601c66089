"""Linear mode connectivity: interpolation between state dicts, interpolation curves, loss/accuracy barriers.

Barrier definitions (Frankle et al. 2020; Sonthalia et al., ICLR 2025; see docs/evaluation.md): on the grid t_0=0 .. t_{K-1}=1,

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

from ..batchnorm import has_batchnorm, reset_bn_stats
from .engine import EvalData, evaluate_loss_accuracy
from ..errors import UserError

__all__ = [
    "interpolate_state_dicts",
    "loss_barrier",
    "accuracy_barrier",
    "InterpolationCurve",
    "interpolation_curve",
    "interpolation_curves",
]

def interpolate_state_dicts(
    sd_a: Mapping[str, torch.Tensor], sd_b: Mapping[str, torch.Tensor], t: float
) -> dict[str, torch.Tensor]:
    """``(1-t)·A + t·B`` for floating tensors; integer tensors (e.g. ``num_batches_tracked``) copied from A."""
    if set(sd_a) != set(sd_b):
        diff = sorted(set(sd_a) ^ set(sd_b))
        raise UserError(f"state dicts have different tensors (e.g. {diff[0]!r}); are they the same architecture?")
    out = {}
    for k, a in sd_a.items():
        b = sd_b[k]
        if a.shape != b.shape:
            raise UserError(f"tensor {k!r} has shape {tuple(a.shape)} in A but {tuple(b.shape)} in B")
        out[k] = torch.lerp(a, b.to(a.dtype), float(t)) if a.is_floating_point() else a.clone()
    return out


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


def _snapshot(sd: Mapping[str, torch.Tensor], model: nn.Module) -> Mapping[str, torch.Tensor]:
    """``sd`` with copies of the tensors that are ``model``'s own (``model.state_dict()`` shares them): the
    container's weights are overwritten at every point, which would move such an endpoint with them."""
    live = {t.data_ptr() for t in model.state_dict().values() if t.numel()}
    if not any(isinstance(v, torch.Tensor) and v.numel() and v.data_ptr() in live for v in sd.values()):
        return sd
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) and v.data_ptr() in live else v
            for k, v in sd.items()}


def interpolation_curves(
    model: nn.Module,
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    data: EvalData,
    num_points: int = 11,
    reset_bn: bool | None = None,
    bn_max_batches: int | None = None,
    progress: bool = False,
    desc: str = "interpolating",
    task=None,
    device=None,
) -> dict[str, InterpolationCurve]:
    """Loss/accuracy of ``(1-t)·A + t·B`` on every split of ``data`` at ``num_points`` evenly spaced t in [0, 1].

    ``model`` is a container whose weights are overwritten. BatchNorm statistics are recomputed at every point
    over ``data.bn_loader`` when the model has BatchNorm (``reset_bn=None``) — without it, barriers between BN
    networks are grossly overstated. B must already be aligned to A when measuring modulo permutation.
    """
    if num_points < 2:
        raise UserError(f"num_points must be >= 2, got {num_points}")
    sd_a, sd_b = _snapshot(sd_a, model), _snapshot(sd_b, model)  # model.state_dict() itself may be passed
    if reset_bn is None:
        reset_bn = has_batchnorm(model)
    accelerator = data.accelerator
    if accelerator is not None:
        device = accelerator.device
        model.to(device)
    ts = [i / (num_points - 1) for i in range(num_points)]
    losses: dict[str, list[float]] = {s: [] for s in data.splits}
    accs: dict[str, list[float]] = {s: [] for s in data.splits}
    show = progress and (accelerator is None or accelerator.is_local_main_process)
    for t in tqdm(ts, desc=desc, disable=not show, leave=False):
        model.load_state_dict(interpolate_state_dicts(sd_a, sd_b, t))
        if reset_bn:
            reset_bn_stats(model, data.bn_loader, bn_max_batches, device=device, task=task)
        for split in data.splits:
            loss, acc = evaluate_loss_accuracy(model, data.prepared[split], device, task, accelerator)
            losses[split].append(loss)
            accs[split].append(acc)
    return {s: InterpolationCurve(ts, losses[s], accs[s]) for s in data.splits}


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
    task=None,
) -> InterpolationCurve:
    """One split: :func:`interpolation_curves` over ``dataloader`` (BN statistics from ``bn_dataloader``,
    default the evaluation dataloader), no accelerator."""
    data = EvalData.from_loaders({"eval": dataloader}, bn_dataloader if bn_dataloader is not None else dataloader)
    return interpolation_curves(model, sd_a, sd_b, data, num_points, reset_bn, bn_max_batches, progress,
                                task=task, device=device)["eval"]
