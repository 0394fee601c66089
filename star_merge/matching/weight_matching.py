"""Weight matching (Ainsworth et al., git re-basin): align model B to model A modulo permutation.

Coordinate descent over the spec's permutations, visited in a seeded random order; each visit solves
one linear assignment problem (scipy's ``linear_sum_assignment``) that maximises the summed inner
product of every tensor touching that permutation, the others held fixed. Stops after a full sweep in
which no permutation improves the objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..spec import AxisPerm, PermutationSpec, SpecError, identity_permutation, permute_tensor

__all__ = ["MatchingResult", "weight_matching", "check_state_dicts", "perm_objective"]


@dataclass
class MatchingResult:
    """``perm``: permutation name -> LongTensor; ``apply_permutation(spec, perm, sd_b)`` is B aligned to A.

    ``objective``: sum over the permuted tensors of <A, perm(B)> after alignment (tied tensors counted
    once). ``iterations``: full sweeps made. ``history``: the objective after each sweep.
    """

    perm: dict[str, torch.Tensor]
    objective: float
    iterations: int
    history: list[float] = field(default_factory=list)


def check_state_dicts(spec: PermutationSpec, *state_dicts: Mapping[str, torch.Tensor], names=("A", "B")) -> None:
    """Fail before any work if state dicts don't fit the spec, disagree, or hold non-finite weights."""
    for i, sd in enumerate(state_dicts):
        label = names[i] if i < len(names) else f"#{i}"
        try:
            spec.validate(sd)
        except SpecError as e:
            raise SpecError(f"model {label}: {e}") from None
        for k in spec.permuted_tensors:
            w = sd[k]
            if not (w.is_floating_point()):
                raise SpecError(f"model {label}: tensor {k!r} has dtype {w.dtype}; weight matching needs floating weights")
            if not torch.isfinite(w).all():
                raise SpecError(f"model {label}: tensor {k!r} contains NaN or inf values")


def _unique_tensors(spec: PermutationSpec, sd: Mapping[str, torch.Tensor]) -> list[str]:
    """Permuted tensor names with storage-sharing duplicates (tied weights) removed."""
    seen, out = set(), []
    for k in spec.permuted_tensors:
        w = sd[k]
        key = (w.untyped_storage().data_ptr(), w.storage_offset(), tuple(w.shape), tuple(w.stride()))
        if key in seen:
            continue
        seen.add(key)
        out.append(k)
    return out


def _to_blocks(w: torch.Tensor, axis: int, ap: AxisPerm, n: int) -> torch.Tensor:
    """Move ``axis`` to the front and reshape to [n, everything else] grouping each permuted block."""
    w = torch.movedim(w, axis, 0)
    rest = w.shape[1:]
    w = w.reshape(ap.repeat, n, ap.block, *rest)
    w = torch.movedim(w, 1, 0)
    return w.reshape(n, -1)


def perm_objective(spec, perm, sd_a, sd_b, names=None, dtype=torch.float32) -> float:
    names = names if names is not None else _unique_tensors(spec, sd_a)
    total = 0.0
    for k in names:
        wb = permute_tensor(sd_b[k], spec.axes_to_perm[k], perm)
        total += float(torch.sum(sd_a[k].to(dtype) * wb.to(dtype)).item())
    return total


@torch.no_grad()
def weight_matching(
    spec: PermutationSpec,
    sd_a: Mapping[str, torch.Tensor],
    sd_b: Mapping[str, torch.Tensor],
    seed: int = 0,
    max_iter: int = 100,
    init_perm: Mapping[str, torch.Tensor] | None = None,
    tol: float = 1e-12,
    validate: bool = True,
    cache_elements: int = 2**27,
) -> MatchingResult:
    """Find the permutation of B's units that best aligns B to A (maximises Σ <A, π(B)>).

    Cost matrices are built with torch on the tensors' device (a GPU when they are there) in float32,
    or float64 for float64 weights, whatever the stored dtype (bf16 works). ``init_perm`` warm-starts
    the search (e.g. last epoch's alignment). Deterministic for a given ``seed``. Per-tensor terms of the
    cost matrices are cached between sweeps up to ``cache_elements`` numbers (512 MiB in float32).
    """
    if validate:
        check_state_dicts(spec, sd_a, sd_b)
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    names = _unique_tensors(spec, sd_a)
    name_set = set(names)
    dtype = torch.float64 if any(sd_a[k].dtype == torch.float64 for k in names) else torch.float32
    A = {k: sd_a[k].to(dtype) for k in names}
    B = {k: sd_b[k].to(device=A[k].device, dtype=dtype) for k in names}
    perm_to_axes = {
        p: [(k, ax, ap) for k, ax, ap in axes if k in name_set] for p, axes in spec.perm_to_axes.items()
    }
    device = next(iter(A.values())).device if A else torch.device("cpu")
    perm = {p: v.clone().to(device) for p, v in (init_perm or identity_permutation(spec)).items()}
    if set(perm) != set(spec.perm_sizes):
        raise SpecError("init_perm must name exactly the spec's permutations")
    # Cached ``A_blocks`` per (tensor, axis): A's tensor reshaped with the axis's blocks in front.
    a_blocks = {
        (k, ax): _to_blocks(A[k], ax, ap, spec.perm_sizes[p]) for p, axes in perm_to_axes.items() for k, ax, ap in axes
    }
    # The cost matrix of permutation p depends only on the permutations sharing a tensor with it. When
    # none of those changed since p was last solved, its matrix is the same and p is already optimal
    # for it: the solve is skipped (same result, fewer assignment problems near convergence).
    neighbours = {
        p: sorted({a.perm for k, ax, _ in axes for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax} - {p})
        for p, axes in perm_to_axes.items()
    }
    version = {p: 0 for p in spec.perm_sizes}
    solved_at: dict[str, tuple] = {}
    terms: dict[tuple[str, int], tuple[tuple, torch.Tensor]] = {}
    cache_budget = [int(cache_elements)]
    order_gen = torch.Generator().manual_seed(int(seed))
    perm_names = sorted(spec.perm_sizes)
    history: list[float] = []
    iterations = 0
    for iterations in range(1, max_iter + 1):
        improved = False
        for i in torch.randperm(len(perm_names), generator=order_gen).tolist():
            p = perm_names[i]
            state = tuple(version[q] for q in neighbours[p])
            if solved_at.get(p) == state:
                continue
            solved_at[p] = state
            n = spec.perm_sizes[p]
            cost = torch.zeros((n, n), dtype=dtype, device=device)
            for k, ax, ap in perm_to_axes[p]:
                # One tensor's term changes only when a permutation on its other axes changes: cached.
                key = tuple(version[a.perm] for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax)
                cached = terms.get((k, ax))
                if cached is None or cached[0] != key:
                    wb = permute_tensor(B[k], spec.axes_to_perm[k], perm, except_axis=ax)
                    term = a_blocks[(k, ax)] @ _to_blocks(wb, ax, ap, n).T
                    if cached is not None:  # replace the stale entry (same size)
                        terms[(k, ax)] = (key, term)
                    elif cache_budget[0] >= term.numel():
                        cache_budget[0] -= term.numel()
                        terms[(k, ax)] = (key, term)
                    cached = (key, term)
                cost += cached[1]
            if torch.equal(cost.argmax(dim=1), perm[p]):
                continue  # every row already takes its own maximum: optimal, no assignment problem needed
            cost_np = cost.double().cpu().numpy()
            old = perm[p].cpu().numpy()
            old_val = cost_np[np.arange(n), old].sum()
            _, col = linear_sum_assignment(cost_np, maximize=True)
            new_val = cost_np[np.arange(n), col].sum()
            if new_val > old_val + tol * max(1.0, abs(old_val)):
                perm[p] = torch.as_tensor(col, dtype=torch.long, device=device)
                version[p] += 1
                improved = True
        history.append(perm_objective(spec, perm, A, B, names, dtype))
        if not improved:
            break
    perm = {p: v.cpu() for p, v in perm.items()}
    return MatchingResult(perm=perm, objective=history[-1], iterations=iterations, history=history)
