"""``star-cifar-vgg``: VGG-11/13/16/19 with BatchNorm for 32x32 images (3x3 conv + BN + ReLU, 2x2 max-pools).

Channels are ``width`` x the VGG table's multiples of 64 (``width`` 64: the usual CIFAR VGG); after the last pool a
global average and one linear classifier (the CIFAR variant's head; on 32x32 inputs the last map is 1x1).
"""

from __future__ import annotations

import torch
from torch import nn

from .common import ModelConfigError
from .vision import StarVisionConfig, StarVisionPreTrainedModel, conv3x3, positive

# Convolutions per stage (each stage ends in a max-pool); stage widths are 1, 2, 4, 8, 8 x 64.
_DEPTHS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
_MULTIPLES = (1, 2, 4, 8, 8)


class StarCifarVGGConfig(StarVisionConfig):
    model_type = "star-cifar-vgg"

    def __init__(self, depth: int = 11, width: int = 64, **kwargs):
        self.depth, self.width = int(depth), int(width)
        if self.depth not in _DEPTHS:
            raise ModelConfigError(f"star-cifar-vgg: depth must be one of {sorted(_DEPTHS)}, got {depth}")
        positive(self.model_type, width=self.width)
        kwargs.setdefault("architectures", ["StarCifarVGGForImageClassification"])
        super().__init__(**kwargs)

    @property
    def conv_widths(self) -> list[list[int]]:
        """The output width of every convolution, stage by stage."""
        return [[self.width * m] * n for n, m in zip(_DEPTHS[self.depth], _MULTIPLES)]


class StarCifarVGGForImageClassification(StarVisionPreTrainedModel):
    """``pixel_values`` [batch, channels, H, W] -> ``logits``; ``features.{i}`` = conv, BN, ReLU (or a pool)."""

    config_class = StarCifarVGGConfig

    def __init__(self, config: StarCifarVGGConfig):
        super().__init__(config)
        layers, cin = [], config.num_channels
        self.conv_index = []  # index in ``features`` of each convolution
        for stage in config.conv_widths:
            for cout in stage:
                self.conv_index.append(len(layers))
                layers += [conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.ReLU()]
                cin = cout
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        return self._head(self.features(self._pixels(pixel_values)), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        return {f"conv_{i}": f"features.{c + 2}" for i, c in enumerate(self.conv_index)}
