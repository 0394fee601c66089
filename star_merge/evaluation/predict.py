"""Batched prediction and interpolation curves through Accelerate (``prepare`` + ``gather_for_metrics``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..connectivity import InterpolationCurve, has_batchnorm, interpolate_state_dicts, reset_bn_stats
from ..data import make_dataloader

__all__ = ["EvalData", "Predictions", "interpolation_curves", "predict"]


@dataclass
class Predictions:
    """One model's outputs on one split, in dataset order: ``log_probs`` float [N, C], ``labels`` long [N]."""

    log_probs: torch.Tensor
    labels: torch.Tensor

    @property
    def probs(self) -> torch.Tensor:
        return self.log_probs.exp()

    @property
    def loss(self) -> float:
        """Mean cross-entropy (nats)."""
        return float(nn.functional.nll_loss(self.log_probs.double(), self.labels))

    @property
    def accuracy(self) -> float:
        return float((self.log_probs.argmax(-1) == self.labels).double().mean())


class EvalData:
    """The splits of one dataset as plain and Accelerate-prepared dataloaders.

    Evaluation iterates the prepared loaders (sharded across processes, gathered back); BatchNorm
    statistics are recomputed over the plain train loader, so every process gets identical statistics.
    """

    def __init__(self, dataset, accelerator, batch_size: int = 512, splits: Iterable[str] = ("train", "test")):
        self.accelerator = accelerator
        self.splits = list(splits)
        self.plain = {s: make_dataloader(dataset[s], batch_size) for s in self.splits}
        self.prepared = {s: accelerator.prepare_data_loader(self.plain[s]) for s in self.splits}
        self.bn_loader = make_dataloader(dataset["train"], batch_size)


@torch.no_grad()
def predict(model: nn.Module, dataloader, accelerator, desc: str | None = None, progress: bool = True) -> Predictions:
    """Log-softmax outputs of ``model`` (eval mode) over a prepared ``dataloader``, gathered on every process."""
    model.to(accelerator.device).eval()
    log_probs, labels = [], []
    show = progress and accelerator.is_local_main_process
    for batch in tqdm(dataloader, desc=desc or "predicting", disable=not show, leave=False):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits.float()
        lp, y = accelerator.gather_for_metrics((logits.log_softmax(-1), batch["labels"]))
        log_probs.append(lp.cpu())
        labels.append(y.cpu().long())
    if not labels:
        raise ValueError("cannot evaluate: the dataloader yielded no samples; check that the split is not empty")
    return Predictions(torch.cat(log_probs), torch.cat(labels))


def interpolation_curves(
    model: nn.Module,
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    data: EvalData,
    num_points: int = 11,
    reset_bn: bool | None = None,
    progress: bool = True,
    desc: str = "interpolating",
) -> dict[str, InterpolationCurve]:
    """Loss/accuracy of ``(1-t)·A + t·B`` on every split of ``data`` at ``num_points`` evenly spaced t.

    ``model`` is a container whose weights are overwritten. BatchNorm statistics are recomputed at every
    point over the train split when the model has BatchNorm (``reset_bn=None``). B must already be
    aligned to A when measuring modulo permutation.
    """
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    if reset_bn is None:
        reset_bn = has_batchnorm(model)
    device = data.accelerator.device
    model.to(device)
    ts = [i / (num_points - 1) for i in range(num_points)]
    losses: dict[str, list[float]] = {s: [] for s in data.splits}
    accs: dict[str, list[float]] = {s: [] for s in data.splits}
    show = progress and data.accelerator.is_local_main_process
    for t in tqdm(ts, desc=desc, disable=not show, leave=False):
        model.load_state_dict(interpolate_state_dicts(sd_a, sd_b, t))
        if reset_bn:
            reset_bn_stats(model, data.bn_loader, device=device)
        for split in data.splits:
            pred = predict(model, data.prepared[split], data.accelerator, progress=False)
            losses[split].append(pred.loss)
            accs[split].append(pred.accuracy)
    return {s: InterpolationCurve(ts, losses[s], accs[s]) for s in data.splits}
