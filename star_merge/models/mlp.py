"""``star-mlp``: a plain chain of Linear + ReLU layers over a flat input."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from .common import ModelConfigError, StarPreTrainedModel


class StarMLPConfig(PreTrainedConfig):
    """Config of :class:`StarMLPForClassification`: ``input_size`` -> ``hidden_sizes`` -> ``num_labels``."""

    model_type = "star-mlp"

    def __init__(self, input_size: int = 40, hidden_sizes=(512, 512), num_labels: int = 10, **kwargs):
        self.input_size = int(input_size)
        self.hidden_sizes = [int(h) for h in hidden_sizes]
        if self.input_size < 1 or not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ModelConfigError("star-mlp needs input_size >= 1 and at least one hidden size >= 1")
        kwargs.setdefault("architectures", ["StarMLPForClassification"])
        if kwargs.get("id2label") is None:  # a saved config carries id2label instead of num_labels
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)


class StarMLPForClassification(StarPreTrainedModel):
    """MLP classifier: ``input_values`` float [batch, input_size] -> ``logits`` [batch, num_labels]."""

    config_class = StarMLPConfig

    def __init__(self, config: StarMLPConfig):
        super().__init__(config)
        sizes = [config.input_size, *config.hidden_sizes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.activations = nn.ModuleList(nn.ReLU() for _ in config.hidden_sizes)
        self.classifier = nn.Linear(sizes[-1], config.num_labels)
        self.post_init()

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        x = input_values.to(self.classifier.weight.dtype).flatten(1)
        for layer, act in zip(self.layers, self.activations):
            x = act(layer(x))
        return self._classify(self.classifier(x), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        return {f"hidden_{i}": f"activations.{i}" for i in range(len(self.layers))}
