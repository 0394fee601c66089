"""Shared pieces of the built-in models."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class ModelConfigError(ValueError):
    """A built-in model's config asks for something it cannot build (the user's input).

    This file ships beside BMA weights (``trust_remote_code``), so it cannot import ``star_merge.errors``;
    ``star_merge.errors`` counts any exception whose class sets ``user_error = True`` as a user error.
    """

    user_error = True


class StarPreTrainedModel(PreTrainedModel):
    """Base class: PyTorch's default initialisation (it trains these small nets well) and a CE head."""

    main_input_name = "input_values"
    base_model_prefix = "star"
    output_class = SequenceClassifierOutput

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.BatchNorm1d)):
            module.reset_parameters()

    def _classify(self, logits: torch.Tensor, labels, return_dict) -> SequenceClassifierOutput | tuple:
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.long().to(logits.device))
        if return_dict is False:
            return (loss, logits) if loss is not None else (logits,)
        return self.output_class(loss=loss, logits=logits)

    def activation_sites(self) -> dict[str, str]:
        """Permutation name -> name of the module whose output holds that permutation's units."""
        raise NotImplementedError
