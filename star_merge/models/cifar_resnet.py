"""``star-cifar-resnet``: the CIFAR ResNets (3x3 stem, no max-pool, basic blocks, projection shortcuts).

``depth`` 18 or 34: four stages of [2, 2, 2, 2] / [3, 4, 6, 3] blocks, widths ``width`` x [1, 2, 4, 8] (``width``
64: the ResNet-18 of the CIFAR literature). ``depth`` 6n+2 (20, 32, 44, 56, 110): He et al.'s CIFAR ResNets, three
stages of n blocks, widths ``width`` x [1, 2, 4] (``width`` 16). A block whose stride or width changes has a 1x1
convolution + BatchNorm shortcut.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import ModelConfigError
from .vision import StarVisionConfig, StarVisionPreTrainedModel, conv3x3, positive, residual_stages, stream_sites

_IMAGENET_STYLE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


class StarCifarResNetConfig(StarVisionConfig):
    model_type = "star-cifar-resnet"

    def __init__(self, depth: int = 18, width: int | None = None, **kwargs):
        self.depth = int(depth)
        if self.depth not in _IMAGENET_STYLE and (self.depth - 2) % 6:
            raise ModelConfigError(f"star-cifar-resnet: depth must be 18, 34 or 6n+2 (20, 32, 56, ...), got {depth}")
        self.width = int(width if width is not None else (64 if self.depth in _IMAGENET_STYLE else 16))
        positive(self.model_type, width=self.width, depth=self.depth - 2)
        kwargs.setdefault("architectures", ["StarCifarResNetForImageClassification"])
        super().__init__(**kwargs)

    @property
    def stages(self) -> list[tuple[int, int]]:
        """(blocks, width) per stage."""
        if self.depth in _IMAGENET_STYLE:
            return [(n, self.width * m) for n, m in zip(_IMAGENET_STYLE[self.depth], (1, 2, 4, 8))]
        n = (self.depth - 2) // 6
        return [(n, self.width * m) for m in (1, 2, 4)]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1, self.bn1, self.act1 = conv3x3(cin, cout, stride), nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2, self.bn2, self.act2 = conv3x3(cout, cout), nn.BatchNorm2d(cout), nn.ReLU()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + (x if self.shortcut is None else self.shortcut(x)))


class StarCifarResNetForImageClassification(StarVisionPreTrainedModel):
    """``pixel_values`` [batch, channels, H, W] -> ``logits`` [batch, num_labels]."""

    config_class = StarCifarResNetConfig

    def __init__(self, config: StarCifarResNetConfig):
        super().__init__(config)
        self.stem = nn.Sequential(conv3x3(config.num_channels, config.width), nn.BatchNorm2d(config.width), nn.ReLU())
        self.stages, cin = residual_stages(config.stages, config.width, BasicBlock)
        self.classifier = nn.Linear(cin, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        return self._head(self.stages(self.stem(self._pixels(pixel_values))), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        """Each stream after the last block that writes it (its output ReLU); each block's inner ReLU."""
        return stream_sites(self.stages, "stem.2", ".act2", "act1")
