"""Group kinds of a symmetry spec and their elements: permutations (index vectors) and orthogonal maps (matrices).

A coordinate of a spec (a name shared by the axes it acts on) ranges over one group:

- ``permutation``: an element is a LongTensor ``perm`` of size n; along an axis ``new[i] = old[perm[i]]``
  (index selection; as a matrix ``P[i, perm[i]] = 1``, so ``new = P · old``).
- ``orthogonal``: an element is an n×n matrix Q with QᵀQ = I; along an axis ``new[i] = Σ_j Q[i, j] old[j]``
  (a matrix product). The residual stream of an RMSNorm transformer in folded form (norm weights 1).
- ``orthogonal-mean-free``: orthogonal with Q·1 = 1 (Q maps the all-ones vector to itself, so it commutes with
  subtracting the mean: the residual stream of a LayerNorm transformer in folded form). Q = u·uᵀ + H·R·Hᵀ with
  u = 1/√n, H an orthonormal basis of the mean-free subspace (:func:`mean_free_basis`) and R ∈ O(n-1); every
  permutation is one.

An axis entry ``AxisPerm(name, block=B, repeat=R)`` has ``R * n * B`` elements; the group element acts on the
n index (the same map on every block element and every repeat). Maps compose like permutations
(:func:`compose_maps`: ``outer ∘ inner`` is ``inner[outer]`` / ``outer @ inner``), invert (``argsort`` /
transpose) and are saved in safetensors (:func:`save_maps`, :func:`load_maps`).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch

from .errors import UserError


class SpecError(UserError):
    """A symmetry spec does not fit a state dict or a group element (missing tensor, unknown name, size mismatch)."""

__all__ = ["PERMUTATION", "ORTHOGONAL", "ORTHOGONAL_MEAN_FREE", "GROUP_KINDS", "SYMMETRIES", "is_orthogonal_kind",
           "mean_free_basis", "polar_factor", "best_orthogonal", "random_map", "identity_map", "invert_map",
           "compose_map", "map_axis", "check_map", "save_maps", "load_maps", "check_symmetry", "expand_index",
           "SpecError"]

PERMUTATION = "permutation"
ORTHOGONAL = "orthogonal"
ORTHOGONAL_MEAN_FREE = "orthogonal-mean-free"
GROUP_KINDS = (PERMUTATION, ORTHOGONAL, ORTHOGONAL_MEAN_FREE)
#: What a caller asks for: permutations only, or orthogonal maps where the family allows them.
SYMMETRIES = ("permutation", "orthogonal")
#: Orthogonal maps are kept in float64 (cast to a tensor's dtype where they are applied).
MAP_DTYPE = torch.float64


def check_symmetry(symmetry: str) -> str:
    if symmetry not in SYMMETRIES:
        raise UserError(f"symmetry {symmetry!r} is not one of {', '.join(SYMMETRIES)}")
    return symmetry


def is_orthogonal_kind(kind: str) -> bool:
    return kind in (ORTHOGONAL, ORTHOGONAL_MEAN_FREE)


def mean_free_basis(n: int, dtype=MAP_DTYPE, device=None) -> torch.Tensor:
    """[n, n-1] orthonormal columns spanning the vectors with zero mean: columns 2..n of the Householder
    reflection that takes e₁ to 1/√n (so its first column is 1/√n)."""
    u = torch.full((n,), 1.0 / math.sqrt(n), dtype=dtype, device=device)
    v = -u
    v[0] += 1.0
    h = torch.eye(n, dtype=dtype, device=device)
    vv = float(v @ v)
    if vv > 0:
        h = h - 2.0 * torch.outer(v, v) / vv
    return h[:, 1:]


def polar_factor(m: torch.Tensor) -> torch.Tensor:
    """The orthogonal polar factor U·Vᵀ of ``m = U·S·Vᵀ`` ([..., n, n]): the orthogonal Q maximising ⟨m, Q⟩."""
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def best_orthogonal(kind: str, cost: torch.Tensor) -> torch.Tensor:
    """argmax_Q ⟨cost, Q⟩ over the group ``kind`` (orthogonal Procrustes) for ``cost`` [..., n, n], in float64.

    ``orthogonal``: the polar factor of ``cost``. ``orthogonal-mean-free``: Q = u·uᵀ + H·R·Hᵀ with R the polar
    factor of Hᵀ·cost·H (the problem in the basis of the mean-free subspace; ⟨cost, u·uᵀ⟩ is fixed)."""
    c = cost.to(MAP_DTYPE)
    if kind == ORTHOGONAL:
        return polar_factor(c)
    n = c.shape[-1]
    h = mean_free_basis(n, device=c.device)
    r = polar_factor(h.T @ c @ h)
    u = torch.full((n, 1), 1.0 / math.sqrt(n), dtype=MAP_DTYPE, device=c.device)
    return u @ u.T + h @ r @ h.T


def random_map(kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random element of the group (uniform: ``randperm``; Haar: QR of a Gaussian with the signs fixed)."""
    if kind == PERMUTATION:
        return torch.randperm(n, generator=generator)
    m = n if kind == ORTHOGONAL else n - 1
    g = torch.randn((m, m), generator=generator, dtype=MAP_DTYPE)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if kind == ORTHOGONAL:
        return q
    h = mean_free_basis(n)
    u = torch.full((n, 1), 1.0 / math.sqrt(n), dtype=MAP_DTYPE)
    return u @ u.T + h @ q @ h.T


def expand_index(perm: torch.Tensor, ap) -> torch.Tensor:
    """Element index along an axis of size ``repeat * len(perm) * block`` for a permutation of blocks."""
    n = perm.numel()
    idx = perm
    if ap.block > 1:
        idx = (perm[:, None] * ap.block + torch.arange(ap.block, device=perm.device)[None, :]).reshape(-1)
    if ap.repeat > 1:
        stride = n * ap.block
        idx = (torch.arange(ap.repeat, device=perm.device)[:, None] * stride + idx[None, :]).reshape(-1)
    return idx


def identity_map(kind: str, n: int, device=None) -> torch.Tensor:
    return torch.arange(n, device=device) if kind == PERMUTATION else torch.eye(n, dtype=MAP_DTYPE, device=device)


def invert_map(m: torch.Tensor) -> torch.Tensor:
    return torch.argsort(m) if m.ndim == 1 else m.T.clone()


def compose_map(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``inner`` first, then ``outer``: ``inner[outer]`` for permutations, ``outer @ inner`` for matrices."""
    if outer.ndim == 1:
        return inner[outer.to(inner.device)]
    return outer.to(inner.device, inner.dtype) @ inner


def map_axis(w: torch.Tensor, axis: int, m: torch.Tensor, ap, batched: bool = False) -> torch.Tensor:
    """``w`` with ``axis`` (``ap``: its block and repeat) taken through the group element ``m``: index selection
    for a permutation ([n], or [g, n] batched), a matrix product for an orthogonal map ([n, n] / [g, n, n]).
    Batched, ``w`` carries a leading batch dimension (``axis`` counts it) and member b takes ``m[b]``."""
    m = m.to(w.device)
    if not m.is_floating_point():  # a permutation: index selection
        if not batched:
            return torch.index_select(w, axis, expand_index(m, ap))
        idx = torch.stack([expand_index(row, ap) for row in m])
        x = torch.movedim(w, axis, 1)
        x = x[torch.arange(x.shape[0], device=x.device)[:, None], idx]
        return torch.movedim(x, 1, axis)
    n = m.shape[-1]
    x = torch.movedim(w, axis, 1 if batched else 0)
    lead = x.shape[:1] if batched else ()
    rest = x.shape[len(lead) + 1:]
    x = x.reshape(*lead, ap.repeat, n, ap.block * math.prod(rest))
    q = m.to(w.dtype)
    x = torch.einsum("gij,grjx->grix", q, x) if batched else torch.einsum("ij,rjx->rix", q, x)
    x = x.reshape(*lead, ap.repeat * n * ap.block, *rest)
    return torch.movedim(x, 1 if batched else 0, axis)


def check_map(name: str, kind: str, n: int, m: torch.Tensor, atol: float = 1e-4) -> None:
    """Raise unless ``m`` is an element of group ``kind`` of size n (the error names the coordinate)."""
    if kind == PERMUTATION:
        if m.ndim != 1 or m.numel() != n or m.is_floating_point() or not torch.equal(
                torch.sort(m.cpu()).values, torch.arange(n)):
            raise SpecError(f"permutation {name!r} is not a permutation of range({n})")
        return
    if m.ndim != 2 or tuple(m.shape) != (n, n) or not m.is_floating_point():
        raise SpecError(f"map {name!r} of kind {kind} must be a floating {n}x{n} matrix, got shape {tuple(m.shape)}")
    q = m.detach().cpu().to(MAP_DTYPE)
    if not torch.allclose(q.T @ q, torch.eye(n, dtype=MAP_DTYPE), atol=atol):
        raise SpecError(f"map {name!r} is not orthogonal (QᵀQ != I)")
    if kind == ORTHOGONAL_MEAN_FREE and not torch.allclose(q.sum(dim=1), torch.ones(n, dtype=MAP_DTYPE), atol=atol):
        raise SpecError(f"map {name!r} does not keep the all-ones vector (Q·1 != 1), which a LayerNorm stream needs")


def save_maps(path: str, maps: Mapping[str, torch.Tensor]) -> None:
    """Save group elements (permutations and orthogonal maps alike) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    from .io import atomic_file

    with atomic_file(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in maps.items()}, tmp)


def load_maps(path: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return dict(load_file(path))
