"""BatchNorm statistics: which models have BatchNorm, and recomputing their running statistics over data.

Used by training (exact statistics after every epoch), the Starlight trainer, interpolation curves and the BMA
export. The batches are turned into model inputs by the model's task (:func:`star_merge.tasks.task_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .tasks import as_batch, task_of
from .errors import UserError

__all__ = ["BN_TYPES", "has_batchnorm", "reset_bn_stats", "to_device"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def to_device(batch, device) -> dict[str, Any]:
    """``batch`` with its tensors moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, BN_TYPES) for m in model.modules())


@torch.no_grad()
def reset_bn_stats(model: nn.Module, dataloader: Iterable, max_batches: int | None = None, device=None,
                   task=None) -> nn.Module:
    """Recompute every BatchNorm's running mean/var over ``dataloader`` as a cumulative (equal-weight) average.

    The model is returned in eval mode. Models without BatchNorm are returned unchanged. Every process should
    pass the same (unsharded) loader so that all get identical statistics.
    """
    bns = [m for m in model.modules() if isinstance(m, BN_TYPES)]
    if not bns:
        return model.eval()
    task = task_of(model, task)
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
        model(**to_device(task.model_inputs(model, as_batch(batch, model)), device))
        seen += 1
    for bn, mom in zip(bns, momenta):
        bn.momentum = mom
    if seen == 0:
        raise UserError("cannot reset BatchNorm statistics: the dataloader yielded no batches")
    return model.eval()
