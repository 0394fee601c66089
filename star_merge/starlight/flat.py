"""The star's parameters as one flat buffer, so a Starlight step interpolates with a single fused op."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn


class FlatLayout:
    """Names, shapes and offsets of a model's parameters inside one flat vector."""

    def __init__(self, named_shapes: list[tuple[str, torch.Size]]):
        self.names = [n for n, _ in named_shapes]
        self.shapes = [torch.Size(s) for _, s in named_shapes]
        self.numels = [s.numel() for s in self.shapes]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        self.total = sum(self.numels)

    @classmethod
    def of(cls, model: nn.Module) -> "FlatLayout":
        return cls([(n, p.shape) for n, p in model.named_parameters()])

    def flatten(self, state_dict: Mapping[str, torch.Tensor], dtype=torch.float32, device=None) -> torch.Tensor:
        return torch.cat([state_dict[n].reshape(-1).to(device=device, dtype=dtype) for n in self.names])

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Name -> view into ``flat`` (no copies; gradients flow back to ``flat``).

        One ``split`` rather than a ``narrow`` per tensor: autograd then assembles ``flat``'s gradient with
        one concatenation instead of summing a zero-padded full-size buffer per tensor.
        """
        return {n: v.view(s) for n, v, s in zip(self.names, flat.split(self.numels), self.shapes)}


class FlatStar(nn.Module):
    """Holds θ (the star) as one parameter; ``forward(anchor, t)`` returns ``(lerp(θ, anchor, t), θ)``.

    Wrapping this tiny module (not the architecture) in DistributedDataParallel makes the gradient
    all-reduce of θ exact while the architecture runs with ``torch.func.functional_call``.
    """

    def __init__(self, flat: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(flat.clone())

    def forward(self, anchor: torch.Tensor | None = None, t: float | torch.Tensor = 0.0):
        if anchor is None:
            return self.theta, self.theta
        return torch.lerp(self.theta, anchor.to(self.theta.dtype), t), self.theta
