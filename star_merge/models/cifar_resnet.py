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
from .vision import StarVisionConfig, StarVisionPreTrainedModel, conv3x3, positive

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
        stages = config.stages
        self.stem = nn.Sequential(conv3x3(config.num_channels, config.width), nn.BatchNorm2d(config.width), nn.ReLU())
        cin, blocks = config.width, []
        for s, (n, width) in enumerate(stages):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(cin, width, 2 if j == 0 and s > 0 else 1))
                cin = width
            blocks.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(blocks)
        self.classifier = nn.Linear(cin, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        x = self.stem(self._pixels(pixel_values))
        for stage in self.stages:
            x = stage(x)
        return self._classify(x, labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        """The stream after the last block that writes it; each block's inner ReLU."""
        sites, stream = {}, "stem"
        last = {"stem": "stem.2"}
        for s, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                if block.shortcut is not None:
                    stream = f"stages.{s}.{j}.residual"
                last[stream] = f"stages.{s}.{j}.act2"
                sites[f"stages.{s}.{j}.conv1"] = f"stages.{s}.{j}.act1"
        return {**sites, **last}
