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
    """Holds θ (the star) as one flat parameter — the only tensor the optimizer updates."""

    def __init__(self, flat: torch.Tensor):
        super().__init__()
        self.theta = nn.Parameter(flat.clone())


class FlatBoundModel:
    """Rebinds a model's parameters to views of one flat weight buffer and one flat gradient buffer.

    A Starlight step then writes the interpolated weights with a single fused ``lerp`` into ``weights``,
    runs the model as it is (no per-parameter reparametrisation) and reads its whole gradient from
    ``grads``, into which autograd accumulates in place. :meth:`release` gives every parameter its own
    storage back (so the model saves and loads like any other).
    """

    def __init__(self, model: nn.Module, layout: FlatLayout, device):
        self.model = model
        self.weights = torch.empty(layout.total, device=device)
        self.grads = torch.zeros(layout.total, device=device)
        params = dict(model.named_parameters())
        if list(params) != layout.names:
            raise ValueError("the flat layout does not match the model's parameters")
        with torch.no_grad():
            for (name, w), g in zip(layout.views(self.weights).items(), layout.views(self.grads).values()):
                p = params[name]
                w.copy_(p.detach())
                p.data = w
                p.grad = g

    @torch.no_grad()
    def load(self, theta: torch.Tensor, anchor: torch.Tensor | None = None, t: float = 0.0) -> None:
        """Weights := θ, or ``(1-t)·θ + t·anchor`` (one fused ``lerp``)."""
        if anchor is None:
            self.weights.copy_(theta)
        else:
            torch.lerp(theta, anchor, t, out=self.weights)

    def zero_grad(self) -> None:
        self.grads.zero_()

    def release(self, theta: torch.Tensor | None = None) -> nn.Module:
        with torch.no_grad():
            for p in self.model.parameters():
                p.data = p.data.clone()
                p.grad = None
        return self.model
