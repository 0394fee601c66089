"""``star-cifar-densenet``: DenseNet(-BC) for CIFAR (Huang et al.), whose layers read concatenated features.

``depth`` L and ``growth_rate`` k; with ``bottleneck`` (DenseNet-BC, the default) each of the three dense blocks
has (L - 4) / 6 layers BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), the stem 2k channels and each transition
BN-ReLU-conv1x1 (``compression``, default 0.5, of the channels)-avg-pool 2; without it (L - 4) / 3 layers
BN-ReLU-conv3x3(k), a 16-channel stem and no compression by default (DenseNet-40-12 of the original paper, 1.0M
parameters). A layer's output is appended to
its input: ``torch.cat([x, new], 1)``, so block b's features are [block input, layer 0, layer 1, ...].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .common import ModelConfigError
from .vision import StarVisionConfig, StarVisionPreTrainedModel, conv3x3, positive


class StarCifarDenseNetConfig(StarVisionConfig):
    model_type = "star-cifar-densenet"

    def __init__(self, depth: int = 40, growth_rate: int = 12, bottleneck: bool = True,
                 compression: float | None = None, **kwargs):
        self.depth, self.growth_rate, self.bottleneck = int(depth), int(growth_rate), bool(bottleneck)
        self.compression = float(compression if compression is not None else 0.5 if self.bottleneck else 1.0)
        per = 6 if self.bottleneck else 3
        if self.depth < 4 + per or (self.depth - 4) % per:
            raise ModelConfigError(f"star-cifar-densenet: depth must be {per}n+4 with bottleneck={self.bottleneck}, "
                                   f"got {depth}")
        positive(self.model_type, growth_rate=self.growth_rate)
        if not 0 < self.compression <= 1:
            raise ModelConfigError(f"star-cifar-densenet: compression must lie in (0, 1], got {compression}")
        kwargs.setdefault("architectures", ["StarCifarDenseNetForImageClassification"])
        super().__init__(**kwargs)

    @property
    def layers_per_block(self) -> int:
        return (self.depth - 4) // (6 if self.bottleneck else 3)

    @property
    def stem_width(self) -> int:
        return 2 * self.growth_rate if self.bottleneck else 16

    def block_inputs(self) -> list[int]:
        """Channels entering each dense block (the stem's, then each transition's)."""
        widths, c = [], self.stem_width
        for b in range(3):
            widths.append(c)
            c += self.layers_per_block * self.growth_rate
            if b < 2:
                c = int(math.floor(c * self.compression))
        return widths


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bottleneck: bool):
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(cin), nn.ReLU()
        if bottleneck:
            self.conv1 = nn.Conv2d(cin, 4 * growth, 1, bias=False)
            self.bn2, self.act2, self.conv2 = nn.BatchNorm2d(4 * growth), nn.ReLU(), conv3x3(4 * growth, growth)
        else:
            self.conv1 = conv3x3(cin, growth)

    def forward(self, x):
        out = self.conv1(self.act1(self.bn1(x)))
        if hasattr(self, "conv2"):
            out = self.conv2(self.act2(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bn, self.act, self.conv = nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, ceil_mode=True)

    def forward(self, x):
        return self.pool(self.conv(self.act(self.bn(x))))


class StarCifarDenseNetForImageClassification(StarVisionPreTrainedModel):
    """``pixel_values`` [batch, channels, H, W] -> ``logits``; ``blocks.{b}.{l}`` dense layers, ``transitions.{b}``."""

    config_class = StarCifarDenseNetConfig

    def __init__(self, config: StarCifarDenseNetConfig):
        super().__init__(config)
        k, n = config.growth_rate, config.layers_per_block
        self.stem = conv3x3(config.num_channels, config.stem_width)
        inputs = config.block_inputs()
        self.blocks = nn.ModuleList(
            nn.Sequential(*(DenseLayer(c + i * k, k, config.bottleneck) for i in range(n))) for c in inputs)
        self.transitions = nn.ModuleList(Transition(inputs[b] + n * k, inputs[b + 1]) for b in range(2))
        self.norm, self.act = nn.BatchNorm2d(inputs[-1] + n * k), nn.ReLU()
        self.classifier = nn.Linear(inputs[-1] + n * k, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        x = self.stem(self._pixels(pixel_values))
        for b, block in enumerate(self.blocks):
            x = block(x)
            if b < 2:
                x = self.transitions[b](x)
        return self._head(self.act(self.norm(x)), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        """Each permutation's units at the convolution that writes them."""
        sites = {"stem": "stem", "transition0": "transitions.0.conv", "transition1": "transitions.1.conv"}
        for b, block in enumerate(self.blocks):
            for i, layer in enumerate(block):
                last = "conv2" if hasattr(layer, "conv2") else "conv1"
                sites[f"blocks.{b}.{i}"] = f"blocks.{b}.{i}.{last}"
                if last == "conv2":
                    sites[f"blocks.{b}.{i}.bottleneck"] = f"blocks.{b}.{i}.conv1"
        return sites
