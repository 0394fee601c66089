"""``star-cifar-wrn``: Wide ResNets WRN-d-k (Zagoruyko & Komodakis) for CIFAR, pre-activation blocks.

``depth`` = 6n + 4 (WRN-22: n = 3, WRN-28: n = 4) and widening factor ``widen_factor`` k: a 3x3 stem of
``base_width`` (16) channels, three stages of n blocks of widths ``base_width`` x k x [1, 2, 4] (strides 1, 2, 2),
each block BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the identity, or a 1x1 convolution of the
pre-activated input where the stride or width changes; a final BN-ReLU, global average and linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from .common import ModelConfigError
from .vision import StarVisionConfig, StarVisionPreTrainedModel, conv3x3, positive, residual_stages, stream_sites


class StarCifarWRNConfig(StarVisionConfig):
    model_type = "star-cifar-wrn"

    def __init__(self, depth: int = 22, widen_factor: int = 1, base_width: int = 16, dropout: float = 0.0, **kwargs):
        self.depth, self.widen_factor, self.base_width = int(depth), int(widen_factor), int(base_width)
        self.dropout = float(dropout)
        if self.depth < 10 or (self.depth - 4) % 6:
            raise ModelConfigError(f"star-cifar-wrn: depth must be 6n+4 (10, 16, 22, 28, ...), got {depth}")
        positive(self.model_type, widen_factor=self.widen_factor, base_width=self.base_width)
        if not 0 <= self.dropout < 1:
            raise ModelConfigError(f"star-cifar-wrn: dropout must lie in [0, 1), got {dropout}")
        kwargs.setdefault("architectures", ["StarCifarWRNForImageClassification"])
        super().__init__(**kwargs)

    @property
    def stages(self) -> list[tuple[int, int]]:
        n = (self.depth - 4) // 6
        return [(n, self.base_width * self.widen_factor * m) for m in (1, 2, 4)]


class PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float):
        super().__init__()
        self.bn1, self.act1, self.conv1 = nn.BatchNorm2d(cin), nn.ReLU(), conv3x3(cin, cout, stride)
        self.bn2, self.act2, self.conv2 = nn.BatchNorm2d(cout), nn.ReLU(), conv3x3(cout, cout)
        self.dropout = nn.Dropout(dropout)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class StarCifarWRNForImageClassification(StarVisionPreTrainedModel):
    """``pixel_values`` [batch, channels, H, W] -> ``logits`` [batch, num_labels]."""

    config_class = StarCifarWRNConfig

    def __init__(self, config: StarCifarWRNConfig):
        super().__init__(config)
        self.stem = conv3x3(config.num_channels, config.base_width)
        self.stages, cin = residual_stages(config.stages, config.base_width,
                                           lambda a, b, stride: PreActBlock(a, b, stride, config.dropout))
        self.norm, self.act = nn.BatchNorm2d(cin), nn.ReLU()
        self.classifier = nn.Linear(cin, config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, return_dict=None, **kwargs):
        x = self.stages(self.stem(self._pixels(pixel_values)))
        return self._head(self.act(self.norm(x)), labels, return_dict)

    def activation_sites(self) -> dict[str, str]:
        """Each stream after the last block that writes it (the block's output); each block's inner ReLU."""
        return stream_sites(self.stages, "stem", "", "act2")
