"""Classification tasks: one label per example, mean cross-entropy, class log-probabilities.

Raw data is prepared with the population's processor: ``text`` (+ ``text_pair``) columns are tokenised once
(:mod:`.text`), an ``image`` column is processed on the fly with optional seeded augmentation (:mod:`.image`).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .base import Task, register_pipeline_tag, register_task

__all__ = ["ClassificationTask", "SEQUENCE_CLASSIFICATION", "IMAGE_CLASSIFICATION"]


class ClassificationTask(Task):
    """``model(**inputs).logits`` is [B, C]; targets are class indices [B] (``-100`` entries are ignored)."""

    def __init__(self, name: str, pipeline_tag: str, bma_head: str):
        self.name, self.pipeline_tag, self.bma_head = name, pipeline_tag, bma_head

    def prepare(self, dataset_dict, processor=None, data_args=None, seed: int = 0):
        """Raw ``text`` is tokenised (``data_args.max_seq_length``); a raw ``image`` column gets the image
        processor as an on-the-fly transform, augmented on the train split when ``data_args.augment``."""
        from datasets import DatasetDict

        from ..data import raw_kind
        from .image import INDEX_COLUMN, ImageTransform
        from .text import tokenize_dataset

        kind = raw_kind(dataset_dict)
        if kind == "text":
            return tokenize_dataset(dataset_dict, processor, getattr(data_args, "max_seq_length", None))
        if kind != "image":
            return dataset_dict
        augment = bool(getattr(data_args, "augment", False))
        out = {}
        for split, ds in dataset_dict.items():
            if augment and split == "train":
                ds = ds.add_column(INDEX_COLUMN, list(range(len(ds))))
            out[split] = ds.with_transform(ImageTransform(processor, augment=augment and split == "train", seed=seed))
        return DatasetDict(out)

    def collator_for(self, processor=None, dataset_dict=None):
        """Per-batch padding for token sequences (with the tokenizer's pad token); the default collate otherwise."""
        from .text import token_collator

        split = next(iter(dataset_dict.values())) if dataset_dict else None
        if split is not None and "input_ids" in split.column_names:
            from ..processing import is_tokenizer

            return token_collator(processor if processor is not None and is_tokenizer(processor) else None)
        return None

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
register_pipeline_tag("ForAudioClassification", "audio-classification")  # scored as sequence classification
register_pipeline_tag("ForTokenClassification", "token-classification")  # no star-merge task; the card still says it
IMAGE_CLASSIFICATION = register_task(
    ClassificationTask("image-classification", "image-classification", "image-classification"),
    suffixes=("ForImageClassification",),
)
