"""The one evaluation engine: a forward pass over a dataloader, BatchNorm resets, predictions.

Every evaluation in star-merge runs through :func:`forward_loader` — the report's scoring, interpolation curves,
``train_classifier``'s test metrics and the BMA's probabilities. With an ``accelerator`` the loader is expected
to be prepared (sharded) and outputs are gathered back with ``gather_for_metrics``; without one it is a plain loop
on ``device``. What a batch means (inputs, targets, loss) comes from the task (:mod:`star_merge.tasks`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..batchnorm import to_device
from ..data import make_dataloader
from ..tasks import as_batch, task_of
from ..errors import UserError

__all__ = [
    "EvalData",
    "Predictions",
    "evaluate_loss_accuracy",
    "forward_loader",
    "predict",
]

@torch.no_grad()
def forward_loader(
    model: nn.Module,
    dataloader: Iterable,
    step: Callable[[nn.Module, dict], Any],
    accelerator=None,
    device=None,
    desc: str | None = None,
    progress: bool = False,
) -> Iterator[Any]:
    """Yield ``step(model, batch)`` for every batch, in eval mode and without gradients.

    With ``accelerator``: batches come from a prepared loader (already on the device) and each output is
    gathered across processes with ``gather_for_metrics`` (duplicated tail samples dropped). Without: batches are
    moved to ``device`` (default: the model's) and outputs are yielded as they are.
    """
    if accelerator is not None:
        model.to(accelerator.device)
        show = progress and accelerator.is_local_main_process
    else:
        device = device or next(model.parameters()).device
        show = progress
    model.eval()
    for batch in tqdm(dataloader, desc=desc or "predicting", disable=not show, leave=False):
        batch = as_batch(batch, model)  # dicts with labels or label, (inputs, labels) tuples
        if accelerator is None:
            yield step(model, to_device(batch, device))
        else:
            yield accelerator.gather_for_metrics(step(model, batch))


@dataclass
class Predictions:
    """One model's outputs on one split, in dataset order: ``log_probs`` float [U, C], ``labels`` long [U].

    Units are examples for classification (tokens for token-level tasks, ``-100`` targets dropped).
    """

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


def _rows(task):
    """The task's per-example predictions: ``(log_probs [B, ..., C], targets [B, ...])``, ``-100`` targets kept,
    so that ``gather_for_metrics`` (which counts examples) drops duplicated examples, never single tokens."""
    return getattr(task, "predict_rows", None) or task.predict


def _flatten(lp: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lp, y = lp.reshape(-1, lp.shape[-1]), y.reshape(-1).long()
    keep = y != -100
    return (lp, y) if bool(keep.all()) else (lp[keep], y[keep])


def predict(model: nn.Module, dataloader, accelerator=None, desc: str | None = None, progress: bool = True,
            task=None, device=None) -> Predictions:
    """The task's log-probabilities and targets of ``model`` over ``dataloader`` (gathered with an accelerator).

    Holds [units, classes] for the whole split: for language models that is [tokens, vocab]; scores that need
    only the loss and accuracy go through :func:`evaluate_loss_accuracy`, which accumulates per batch, and the
    report's calibration metrics through :func:`.streaming.score_models` (per-unit scalars)."""
    task = task_of(model, task)
    log_probs, labels = [], []
    for lp, y in forward_loader(model, dataloader, _rows(task), accelerator, device, desc, progress):
        lp, y = _flatten(lp, y)
        log_probs.append(lp.cpu())
        labels.append(y.cpu())
    if not labels:
        raise UserError("cannot evaluate: the dataloader yielded no samples; check that the split is not empty")
    return Predictions(torch.cat(log_probs), torch.cat(labels))


def _unit_sums(task):
    """A step giving per-example [B, 3] sums (NLL, correct, units) of the task's predictions."""
    rows = _rows(task)

    def step(model, batch):
        lp, y = rows(model, batch)
        lp, y = lp.reshape(y.shape[0], -1, lp.shape[-1]), y.reshape(y.shape[0], -1).long()
        keep = y != -100
        yc = y.clamp_min(0)
        nll = -lp.double().gather(-1, yc[..., None]).squeeze(-1)
        correct = (lp.argmax(-1) == yc) & keep
        return torch.stack([(nll * keep).sum(1), correct.sum(1).double(), keep.sum(1).double()], 1)

    return step


def evaluate_loss_accuracy(model: nn.Module, dataloader: Iterable, device=None, task=None, accelerator=None,
                           desc: str | None = None, progress: bool = False) -> tuple[float, float]:
    """Mean loss (cross-entropy per unit: example or token) and accuracy (fraction) of ``model`` in eval mode over
    ``dataloader``, accumulated per batch (no [units, classes] tensor is kept)."""
    task = task_of(model, task)
    total = torch.zeros(3, dtype=torch.float64)
    for sums in forward_loader(model, dataloader, _unit_sums(task), accelerator, device, desc, progress):
        total += sums.cpu().sum(0)
    if total[2] == 0:
        raise UserError("cannot evaluate: the dataloader yielded no samples; check that the split is not empty")
    return float(total[0] / total[2]), float(total[1] / total[2])


class EvalData:
    """The splits of one dataset as plain and (with an accelerator) prepared dataloaders.

    Evaluation iterates ``prepared`` (sharded across processes, gathered back; the plain loaders without an
    accelerator); BatchNorm statistics are recomputed over the plain train loader ``bn_loader``, so every
    process gets identical statistics.
    """

    def __init__(self, dataset, accelerator=None, batch_size: int = 512, splits: Iterable[str] = ("train", "test"),
                 collate_fn=None):
        self.accelerator = accelerator
        self.splits = list(splits)
        self.plain = {s: make_dataloader(dataset[s], batch_size, collate_fn=collate_fn) for s in self.splits}
        self.prepared = (
            {s: accelerator.prepare_data_loader(self.plain[s]) for s in self.splits} if accelerator else self.plain
        )
        self.bn_loader = make_dataloader(dataset["train"], batch_size, collate_fn=collate_fn)

    @classmethod
    def from_loaders(cls, loaders: dict, bn_loader, accelerator=None) -> "EvalData":
        """Wrap ready dataloaders (already prepared when ``accelerator`` is given)."""
        self = cls.__new__(cls)
        self.accelerator, self.splits = accelerator, list(loaders)
        self.plain = self.prepared = dict(loaders)
        self.bn_loader = bn_loader
        return self
