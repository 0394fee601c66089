"""``star-cnn1d``: a small 1-D CNN with BatchNorm for MNIST-1D (after the dataset paper's CNN)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig

from .common import ModelConfigError, StarPreTrainedModel


class StarCNN1dConfig(PreTrainedConfig):
    """Conv1d(k, stride 2) + BatchNorm + ReLU per entry of ``channels``, then a linear classifier."""

    model_type = "star-cnn1d"

    def __init__(
        self,
        input_size: int = 40,
        channels=(32, 64, 64),
        kernel_size: int = 5,
        num_labels: int = 10,
        **kwargs,
    ):
        self.input_size = int(input_size)
        self.channels = [int(c) for c in channels]
        self.kernel_size = int(kernel_size)
        if self.kernel_size % 2 == 0:
            raise ModelConfigError("star-cnn1d needs an odd kernel_size")
        kwargs.setdefault("architectures", ["StarCNN1dForClassification"])
        if kwargs.get("id2label") is None:  # a saved config carries id2label instead of num_labels
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)

    @property
    def feature_length(self) -> int:
        n = self.input_size
        for _ in self.channels:
            n = (n - 1) // 2 + 1  # stride 2, padding k//2
        return n


class StarCNN1dForClassification(StarPreTrainedModel):
    """``input_values`` float [batch, input_size] -> ``logits`` [batch, num_labels]."""

    config_class = StarCNN1dConfig

    def __init__(self, config: StarCNN1dConfig):
        super().__init__(config)
        k = config.kernel_size
        ins = [1, *config.channels[:-1]]
        self.convs = nn.ModuleList(
            nn.Conv1d(a, b, k, stride=2, padding=k // 2, bias=False) for a, b in zip(ins, config.channels)
        )
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in config.channels)
        self.activations = nn.ModuleList(nn.ReLU() for _ in config.channels)
        self.classifier = nn.Linear(config.channels[-1] * config.feature_length, config.num_labels)
        self.post_init()

    def forward(self, input_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        x = input_values.to(self.classifier.weight.dtype).reshape(input_values.shape[0], 1, -1)
        for conv, norm, act in zip(self.convs, self.norms, self.activations):
            x = act(norm(conv(x)))
        return self._classify(self.classifier(x.flatten(1)), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        return {f"conv_{i}": f"activations.{i}" for i in range(len(self.convs))}
