"""REPAIR (Jordan et al., ICLR 2023): restore a merged or interpolated network's activation statistics.

Averaging aligned networks shrinks the spread of their pre-activations ("variance collapse"); REPAIR measures,
at every repair site, each channel's mean and standard deviation in the members and in the merged model, and
rescales the merged model's channel so that its statistics become the members' weighted ones
(``(1-t)·stat_a + t·stat_b`` on an interpolation path, ``Σ_i w_i stat_i`` for N members). The correction
``y' = (y - μ_m)·σ*/σ_m + μ*`` is folded into the site's weight (rows scaled) and bias, so the repaired
model is a plain checkpoint of the same architecture. Sites are repaired in order, each measured with the
earlier corrections in place, so after repair every site's statistics over the repair data equal the targets
(to float rounding). BatchNorm models take the BatchNorm reset instead (:func:`~star_merge.batchnorm.reset_bn_stats`).

Repair sites (:func:`repair_sites`): a model's own ``repair_sites()`` if it declares them, else read from its
adapter's permutation spec: every Linear / Conv / transformers ``Conv1D`` with a bias whose output units are a
permutation of single units (not attention heads or fused q/k/v blocks) that no other module writes (a layer's
hidden units, before its nonlinearity; a residual stream, written by many modules, is not one).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..batchnorm import has_batchnorm, run_batches
from ..errors import UserError
from ..tasks import task_of

__all__ = ["RepairError", "RepairRecord", "repair_sites", "channel_stats", "repair_model", "REPAIR_EPS", "REPAIR_BATCHES"]

# Added to the merged model's standard deviation before dividing by it.
REPAIR_EPS = 1e-8
# Batches a repair measures when the caller does not say (``star-merge merge --repair``, ``barrier --repair``).
REPAIR_BATCHES = 20


class RepairError(UserError):
    """REPAIR cannot run as asked (no sites, no data, a BatchNorm model)."""


@dataclass
class RepairRecord:
    """``sites``: the modules repaired, in order; ``scale`` / ``shift``: site -> per-channel σ*/σ_m and the
    new bias minus the old one; ``batches``: batches of data measured per pass."""

    sites: list[str]
    scale: dict[str, torch.Tensor] = field(default_factory=dict)
    shift: dict[str, torch.Tensor] = field(default_factory=dict)
    batches: int = 0


def _output_axis(module: nn.Module) -> int | None:
    """Axis of the module's weight that holds its output units, or None if not a foldable site."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return 0
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D: weight [in, out]
        return 1
    return None


def repair_sites(model: nn.Module, spec=None) -> list[str]:
    """The model's repair sites in forward order (module docstring)."""
    declared = getattr(model, "repair_sites", None)
    if callable(declared):
        return list(declared())
    if spec is None:
        from ..adapters import spec_for

        spec = spec_for(model)
    modules = dict(model.named_modules())
    writers: dict[str, list[str]] = {}
    for name, module in modules.items():
        axis = _output_axis(module)
        axes = spec.axes_to_perm.get(f"{name}.weight") if axis is not None else None
        # not permuted, or attention heads / fused q, k, v (their outputs meet softmax(q·k), not a unit-wise nonlinearity)
        if axes is None or axes[axis] is None or axes[axis].block != 1 or axes[axis].repeat != 1:
            continue
        writers.setdefault(axes[axis].perm, []).append(name)
    return [names[0] for names in writers.values() if len(names) == 1 and getattr(modules[names[0]], "bias", None) is not None]


def _channels(y: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Site output as [channels, everything else]."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return y.transpose(0, 1).reshape(y.shape[1], -1)
    return y.reshape(-1, y.shape[-1]).T


@torch.no_grad()
def channel_stats(model: nn.Module, sites: Sequence[str], data: Iterable, max_batches: int | None = None,
                  device=None, task=None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel (mean, std) of every site's output over ``data`` (population std, float64, on the CPU)."""
    task = task_of(model, task)
    device = device or next(model.parameters()).device
    modules = dict(model.named_modules())
    sums: dict[str, list] = {s: [0.0, 0.0, 0] for s in sites}

    def hook(name):
        def record(module, inputs, output):
            y = _channels(output.detach().double(), module)
            acc = sums[name]
            acc[0] = acc[0] + y.sum(1).cpu()
            acc[1] = acc[1] + y.square().sum(1).cpu()
            acc[2] += y.shape[1]
        return record

    handles = [modules[s].register_forward_hook(hook(s)) for s in sites]
    model.eval()
    try:
        seen = run_batches(model, data, max_batches, device, task)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise RepairError("REPAIR needs data: the dataloader yielded no batches")
    out = {}
    for s, (total, squares, n) in sums.items():
        mean = total / n
        out[s] = (mean, (squares / n - mean.square()).clamp_min(0).sqrt())
    return out


def _fold(module: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``y -> y·scale + shift`` folded into the module's weight rows and bias."""
    axis = _output_axis(module)
    w = module.weight
    view = [1] * w.ndim
    view[axis] = -1
    w.mul_(scale.to(w.dtype).view(view).to(w.device))
    module.bias.mul_(scale.to(w.dtype).to(w.device)).add_(shift.to(w.dtype).to(w.device))


@torch.no_grad()
def repair_model(model: nn.Module, members: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float],
                 data: Iterable, max_batches: int | None = None, sites: Sequence[str] | None = None,
                 device=None, task=None, member_stats=None) -> RepairRecord:
    """REPAIR ``model`` (the merge, in the members' common frame) in place toward the members' statistics.

    ``members``: the members' state dicts aligned to the model's frame; ``weights``: their weights (the target
    is Σ w_i stat_i); ``data``: batches the statistics are measured over (the same for members and model);
    ``member_stats``: the members' :func:`channel_stats`, if already measured (an interpolation path reuses its
    two ends'). Refuses BatchNorm models (reset their statistics instead).
    """
    if has_batchnorm(model):
        raise RepairError("the model has BatchNorm: reset its statistics (reset_bn_stats / --repair on a BatchNorm "
                          "model resets them) instead of REPAIR")
    sites = list(sites) if sites is not None else repair_sites(model)
    if not sites:
        name = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise RepairError(f"{name} has no repair sites (Linear/Conv layers with a bias before a nonlinearity)")
    if member_stats is None:
        probe = copy.deepcopy(model)
        member_stats = []
        for sd in members:
            probe.load_state_dict(sd)
            member_stats.append(channel_stats(probe, sites, data, max_batches, device, task))
    record = RepairRecord(sites=sites)
    modules = dict(model.named_modules())
    for s in sites:
        mean_t = sum(w * st[s][0] for w, st in zip(weights, member_stats))
        std_t = sum(w * st[s][1] for w, st in zip(weights, member_stats))
        mean_m, std_m = channel_stats(model, [s], data, max_batches, device, task)[s]
        scale = std_t / (std_m + REPAIR_EPS)
        shift = mean_t - scale * mean_m
        bias_before = modules[s].bias.detach().double().cpu().clone()
        _fold(modules[s], scale, shift)
        record.scale[s] = scale
        record.shift[s] = modules[s].bias.detach().double().cpu() - bias_before
    record.batches = max_batches or 0
    return record
