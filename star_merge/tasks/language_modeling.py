"""Language-model tasks: causal LM (next-token prediction) and masked LM; the unit is the token.

Both losses are computed the way the models compute their own ``labels=`` loss: cross-entropy over the
vocabulary, averaged over the target tokens (``-100`` targets ignored). For a causal LM the target of position
``i`` is token ``i + 1`` (logits and labels shifted by one, as in transformers' ``ForCausalLMLoss``); for a
masked LM the targets are the masked positions only (the collator's ``labels``). ``predict`` returns one row
per target token. The data side (tokenising, blocks, masking) is in :mod:`.lm_data`.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from .base import Task, register_task

__all__ = ["LanguageModelingTask", "CAUSAL_LM", "MASKED_LM"]


class LanguageModelingTask(Task):
    """``causal``: next-token CE on shifted logits; otherwise masked-LM CE on the ``labels`` positions."""

    data_kind = "text"  # the dataset is raw text, tokenised with the population's tokenizer (lm_data.prepare)

    def __init__(self, name: str, pipeline_tag: str, bma_head: str, causal: bool):
        self.name, self.pipeline_tag, self.bma_head, self.causal = name, pipeline_tag, bma_head, causal

    # ------------------------------------------------------------------ data
    def prepare(self, dataset_dict, processor=None, data_args=None, seed: int = 0):
        from .lm_data import masking_for, prepare_lm_dataset

        if not self.causal and processor is not None:
            self.masking = masking_for(processor, data_args)  # what the training collator re-masks with
        return prepare_lm_dataset(dataset_dict, processor, data_args, causal=self.causal)

    masking = None  # masked LM: the lm_data.Masking of the last prepared dataset

    @property
    def collator(self):
        """Causal LM: blocks are equal length, torch's default collate. Masked LM: a fresh masking of every block
        per epoch (:class:`.lm_data.MaskingCollator`, with the tokenizer's ids recorded by :meth:`prepare`)."""
        if self.causal or self.masking is None:
            return None
        from .lm_data import MaskingCollator

        return MaskingCollator(self.masking)

    def check_dataset(self, dataset, config) -> None:
        from .lm_data import check_token_ids

        check_token_ids(dataset, config.vocab_size)

    # ------------------------------------------------------------------ model calls
    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "labels" in batch:
            return batch["labels"]
        labels = batch["input_ids"].clone()  # causal LM without stored labels: the inputs, padding ignored
        if "attention_mask" in batch:
            labels[batch["attention_mask"] == 0] = -100
        return labels

    def logits(self, model, batch: Mapping[str, Any]) -> torch.Tensor:
        """Per-position logits [B, T, V] (BERT's ``ForPreTraining`` names them ``prediction_logits``)."""
        out = model(**self.model_inputs(model, batch))
        logits = out.logits if getattr(out, "logits", None) is not None else out.prediction_logits
        return logits.float()

    def token_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flatten to ``(logits [N, V], targets [N])`` over every position, shifted by one for a causal LM."""
        if self.causal:
            logits, labels = logits[:, :-1, :], labels[:, 1:]
        return logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)

    def loss(self, model, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean cross-entropy per target token (what the model's own ``labels=`` loss is)."""
        logits, targets = self.token_logits(self.logits(model, batch), self.targets(batch))
        return nn.functional.cross_entropy(logits, targets.long(), ignore_index=-100)

    def predict_rows(self, model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_probs [B, T', V], targets [B, T'])`` per example (``T' = T - 1`` for a causal LM), ``-100`` kept:
        the evaluation engine gathers these across processes by example, then flattens to tokens."""
        logits, targets = self.logits(model, batch), self.targets(batch)
        if self.causal:
            logits, targets = logits[:, :-1, :], targets[:, 1:]
        return logits.log_softmax(-1), targets

    def predict(self, model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log_probs [N, V], targets [N])`` over the batch's target tokens (``-100`` positions dropped)."""
        logits, targets = self.token_logits(self.logits(model, batch), self.targets(batch))
        keep = targets != -100
        return logits[keep].log_softmax(-1), targets[keep]


CAUSAL_LM = register_task(
    LanguageModelingTask("causal-lm", "text-generation", "causal-lm", causal=True),
    suffixes=("ForCausalLM", "LMHeadModel"),
)
MASKED_LM = register_task(
    LanguageModelingTask("masked-lm", "fill-mask", "masked-lm", causal=False),
    suffixes=("ForMaskedLM", "ForPreTraining"),
)
