"""Activation matching: align B to A by correlating unit activations over data (Ainsworth et al., §3.1)."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ..spec import PermutationSpec, SpecError, group_kind, identity_permutation
from .descent import DescentStats
from .solvers import solve_group
from .weight_matching import MatchingResult
from ..errors import UserError

__all__ = ["activation_matching"]


class _Stats:
    def __init__(self):
        self.n = 0
        self.sa = self.sb = self.saa = self.sbb = self.sab = None

    def update(self, a: torch.Tensor, b: torch.Tensor):
        a, b = a.double(), b.double()
        if self.sa is None:
            c = a.shape[1]
            z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=a.device)  # noqa: E731
            self.sa, self.sb, self.saa, self.sbb, self.sab = z(c), z(c), z(c), z(c), z(c, c)
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def covariance(self) -> torch.Tensor:
        """E[(a - μa)(b - μb)ᵀ]: the cross-covariance, whose polar factor is the best orthogonal map."""
        return self.sab / self.n - (self.sa / self.n)[:, None] * (self.sb / self.n)[None, :]

    def correlation(self) -> torch.Tensor:
        n = self.n
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - ma[:, None] * mb[None, :]
        sa = (self.saa / n - ma**2).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb**2).clamp_min(0).sqrt()
        return cov / (sa[:, None] * sb[None, :] + 1e-12)


def _units_last(x: torch.Tensor) -> torch.Tensor:
    """[batch, units] or [batch, units, *spatial] -> [samples, units]."""
    if x.ndim == 2:
        return x
    return torch.movedim(x, 1, -1).reshape(-1, x.shape[1])


def spec_matrix(m: torch.Tensor) -> torch.Tensor:
    """A group element as a matrix (a permutation's ``P[i, perm[i]] = 1``), float64."""
    if m.is_floating_point():
        return m.to(torch.float64)
    return torch.eye(m.numel(), dtype=torch.float64)[m]


@torch.no_grad()
def activation_matching(
    spec: PermutationSpec,
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    dataloader: Iterable[Mapping[str, torch.Tensor]],
    sites: Mapping[str, str] | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> MatchingResult:
    """Match each permutation's units by the correlation of their activations on ``dataloader``.

    ``sites`` maps permutation name -> module name whose output carries those units (defaults to
    ``model.activation_sites()``, which the built-in models provide). Valid for networks in which
    every permutation is observed at one site (plain MLP/CNN chains). The objective reported is the
    summed correlation of matched units. Each group is solved by ``solve_group``: linear assignment on the
    correlation matrix for a permutation, orthogonal Procrustes (the polar factor; with Q·1 = 1 where the kind
    says so) on the cross-covariance for an orthogonal group (objective ⟨cov, Q⟩).
    """
    sites = dict(sites if sites is not None else model_a.activation_sites())
    if set(sites) != set(spec.perm_sizes):
        raise SpecError(
            f"activation sites {sorted(sites)} do not cover the spec's permutations {sorted(spec.perm_sizes)}"
        )
    mods_a, mods_b = dict(model_a.named_modules()), dict(model_b.named_modules())
    stats = {p: _Stats() for p in sites}
    captured: dict[tuple[str, str], torch.Tensor] = {}
    handles = []
    for p, name in sites.items():
        if name not in mods_a or name not in mods_b:
            raise SpecError(f"activation site {name!r} for permutation {p!r} is not a module of both models")
        for tag, mods in (("a", mods_a), ("b", mods_b)):
            handles.append(mods[name].register_forward_hook(lambda m, i, o, p=p, tag=tag: captured.__setitem__((p, tag), o)))
    was_training = (model_a.training, model_b.training)
    model_a.eval()
    model_b.eval()
    device = next(model_a.parameters()).device
    try:
        for i, batch in enumerate(tqdm(dataloader, desc="activation matching", disable=not progress, leave=False)):
            if max_batches is not None and i >= max_batches:
                break
            inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            model_a(**inputs)
            model_b(**inputs)
            for p in sites:
                stats[p].update(_units_last(captured[(p, "a")]), _units_last(captured[(p, "b")]))
    finally:
        for h in handles:
            h.remove()
        model_a.train(was_training[0])
        model_b.train(was_training[1])
    perm, objective, start = {}, 0.0, identity_permutation(spec)
    for p in sorted(sites):
        if stats[p].n == 0:
            raise UserError("the dataloader yielded no batches; activation matching needs data")
        kind = group_kind(spec, p)  # orthogonal maps: the cross-covariance (a rotation does not keep unit scales)
        corr = stats[p].correlation() if kind == "permutation" else stats[p].covariance()
        corr = torch.as_tensor(np.nan_to_num(corr.cpu().numpy()))
        found = solve_group(kind, {p: corr[None]}, {p: start[p][None]}, solver="scipy", tol=0.0,
                            stats=DescentStats())
        perm[p] = found[0][2].cpu() if found else start[p]  # not improved: the identity is optimal
        objective += float((corr * spec_matrix(perm[p])).sum())
    return MatchingResult(perm=perm, objective=objective, iterations=1, history=[objective])
