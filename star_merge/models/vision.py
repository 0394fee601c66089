"""Shared pieces of the built-in CIFAR image classifiers (ResNet, VGG, WRN, DenseNet).

Self-contained (torch and transformers only, relative imports within ``star_merge/models``): the files ship
beside BMA weights. Every model reads ``pixel_values`` [batch, num_channels, H, W] (any H, W: global average
pooling before the classifier) and returns ``logits``; its image processor (:func:`image_processor_for`) resizes
to ``image_size`` and normalises each channel with the config's ``image_mean`` / ``image_std`` (CIFAR-10's).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import ImageClassifierOutputWithNoAttention

from .common import ModelConfigError, StarPreTrainedModel

# Per-channel statistics of the CIFAR-10 training images (the paper's normalisation).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class StarVisionConfig(PreTrainedConfig):
    """What every built-in image classifier shares: input channels, image size, normalisation, labels."""

    def __init__(self, num_channels: int = 3, image_size: int = 32, image_mean=CIFAR10_MEAN, image_std=CIFAR10_STD,
                 num_labels: int = 10, **kwargs):
        self.num_channels = int(num_channels)
        self.image_size = int(image_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        if self.num_channels < 1 or self.image_size < 1:
            raise ModelConfigError(f"{self.model_type}: num_channels and image_size must be >= 1")
        if len(self.image_mean) != self.num_channels or len(self.image_std) != self.num_channels:
            raise ModelConfigError(f"{self.model_type}: image_mean and image_std need one value per channel "
                                   f"({self.num_channels})")
        if kwargs.get("id2label") is None:  # a saved config carries id2label instead of num_labels
            kwargs["num_labels"] = num_labels
        super().__init__(**kwargs)


def positive(model_type: str, **values) -> None:
    for name, v in values.items():
        if int(v) < 1:
            raise ModelConfigError(f"{model_type}: {name} must be >= 1, got {v}")


def image_processor_for(config):
    """The image processor a population of ``config`` reads raw images with (saved in every member folder):
    RGB, resized to ``image_size``², scaled to [0, 1], normalised per channel."""
    try:  # the PIL backend (transformers >= 5 without torchvision); saved as a ViTImageProcessor either way
        from transformers import ViTImageProcessorPil as ViTImageProcessor
    except ImportError:
        from transformers import ViTImageProcessor

    return ViTImageProcessor(do_resize=True, size={"height": config.image_size, "width": config.image_size},
                             do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                             image_mean=list(config.image_mean), image_std=list(config.image_std))


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def residual_stages(stages, cin: int, block) -> tuple[nn.Sequential, int]:
    """``stages.{s}.{j}``: ``block(cin, cout, stride)`` per (blocks, width) stage, stride 2 entering every stage
    but the first; returns the stages and the channels they end with."""
    out = []
    for s, (n, width) in enumerate(stages):
        layers = []
        for j in range(n):
            layers.append(block(cin, width, 2 if j == 0 and s > 0 else 1))
            cin = width
        out.append(nn.Sequential(*layers))
    return nn.Sequential(*out), cin


def stream_sites(stages, stem_site: str, block_site: str, inner_site: str) -> dict[str, str]:
    """Activation sites of a residual network: each stream (``stem``, then ``stages.{s}.{j}.residual`` from a block
    with a projection shortcut) at the last block that writes it, each block's inner units (``....conv1``)."""
    sites, stream, last = {}, "stem", {"stem": stem_site}
    for s, stage in enumerate(stages):
        for j, block in enumerate(stage):
            if block.shortcut is not None:
                stream = f"stages.{s}.{j}.residual"
            last[stream] = f"stages.{s}.{j}{block_site}"
            sites[f"stages.{s}.{j}.conv1"] = f"stages.{s}.{j}.{inner_site}"
    return {**sites, **last}


class StarVisionPreTrainedModel(StarPreTrainedModel):
    """Base class: Kaiming-normal convolutions (fan out), BatchNorm at 1/0, PyTorch's default linear layers."""

    main_input_name = "pixel_values"
    output_class = ImageClassifierOutputWithNoAttention

    def _init_weights(self, module):
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()
        elif isinstance(module, nn.Linear):
            module.reset_parameters()

    def _head(self, features: torch.Tensor, labels, return_dict):
        """Global average pooling, the classifier, the cross-entropy loss when ``labels`` are given."""
        return self._classify(self.classifier(features.mean(dim=(2, 3))), labels, return_dict)

    def _pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.to(self.classifier.weight.dtype)
