"""Classification tasks: one label per example, mean cross-entropy, class log-probabilities."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .base import Task, register_task

__all__ = ["ClassificationTask", "SEQUENCE_CLASSIFICATION", "IMAGE_CLASSIFICATION"]


class ClassificationTask(Task):
    """``model(**inputs).logits`` is [B, C]; targets are class indices [B] (``-100`` entries are ignored)."""

    def __init__(self, name: str, pipeline_tag: str, bma_head: str):
        self.name, self.pipeline_tag, self.bma_head = name, pipeline_tag, bma_head

    def logits(self, model, batch: Mapping[str, Any]) -> torch.Tensor:
        return model(**self.model_inputs(model, batch)).logits.float()

    def loss(self, model, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean cross-entropy of the batch (what Starlight, population training and evaluation minimise)."""
        return nn.functional.cross_entropy(self.logits(model, batch), self.targets(batch))

    def predict(self, model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        log_probs = self.logits(model, batch).log_softmax(-1)
        targets = self.targets(batch)
        keep = targets != -100
        if not bool(keep.all()):
            log_probs, targets = log_probs[keep], targets[keep]
        return log_probs, targets


SEQUENCE_CLASSIFICATION = register_task(
    ClassificationTask("sequence-classification", "text-classification", "sequence-classification"),
    suffixes=("ForSequenceClassification", "ForAudioClassification"),
    architectures=("StarMLPForClassification", "StarCNN1dForClassification"),
)
IMAGE_CLASSIFICATION = register_task(
    ClassificationTask("image-classification", "image-classification", "image-classification"),
    suffixes=("ForImageClassification",),
)
