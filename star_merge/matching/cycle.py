"""Cycle-consistent multi-model matching (C2M3, Crisostomi et al., NeurIPS 2024): Frank-Wolfe into a universe.

Member i gets one map P_i per permutation of the spec into a shared universe; the pairwise map i -> j is
P_j^T P_i, so every cycle composes to the identity by construction. The maps are optimised jointly:

    maximise  J(P) = Σ_{i<j} w_i w_j Σ_k <P_i(θ_i)_k, P_j(θ_j)_k>   over doubly stochastic P

(P_i(θ_i)_k: tensor k with every permuted axis mixed by its matrix, :func:`star_merge.groups.map_axis` through :func:`.terms.apply_maps`), by
Frank-Wolfe from the vertex of the members' weight matchings to member 0 (the ``reference`` alignment, so
the result is never below it): the gradient of J in every P_i^p at once (autograd), the linear
maximisation over the permutation matrices solved by the engine's assignment solver per (member,
permutation) (``solvers.solve``, the one weight matching uses), a step toward that vertex with an exact
line search on J (a polynomial in the step: fitted through 5 evaluations, maximised on a fine grid, kept
only if it really improves J), until the Frank-Wolfe gap falls under ``tol``·|J| or ``max_iter`` steps.
Each relaxed map is then projected onto the nearest permutation (one more assignment, maximising <P, Π>).
Member 0's maps are held at the identity: the universe is only defined up to one common permutation, and
this fixes it to member 0's frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..spec import PermutationSpec
from .solvers import pick_solver, solve
from .terms import apply_maps
from .weight_matching import unique_tensors

__all__ = ["cycle_consistent_perms", "relaxed_objective", "FW_GRID"]

# Step sizes at which J is evaluated to fit its polynomial along a Frank-Wolfe direction.
FW_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def relaxed_objective(spec: PermutationSpec, tensors: Sequence[Mapping[str, torch.Tensor]],
                      maps: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> torch.Tensor:
    """J(P) for members ``tensors`` (the permuted tensors) under matrix maps ``maps[i]`` (differentiable)."""
    total = torch.zeros((), dtype=torch.float64)
    for k in tensors[0]:
        axes = spec.axes_to_perm[k]
        mapped = [w * apply_maps(t[k], axes, m) for w, t, m in zip(weights, tensors, maps)]
        s = torch.stack(mapped).sum(0)
        total = total + 0.5 * (s.square().sum() - sum(x.square().sum() for x in mapped))
    return total


def _vertex(grad: torch.Tensor, solver: str) -> torch.Tensor:
    """The permutation matrix maximising <grad, Π> (the linear maximisation oracle), as a matrix."""
    n = grad.shape[0]
    cols = solve(grad.detach().double().numpy(), pick_solver(solver, n=n))
    return torch.eye(n, dtype=grad.dtype)[torch.as_tensor(np.asarray(cols), dtype=torch.long)]


def _line_search(spec, tensors, maps, dirs, weights, j0: float) -> tuple[float, float]:
    """The step γ in [0, 1] along ``dirs`` maximising J (polynomial fit through FW_GRID), and J there."""
    with torch.no_grad():
        def at(g):
            return float(relaxed_objective(spec, tensors, [{p: m[p] + g * d[p] for p in m} for m, d in zip(maps, dirs)],
                                           weights))

        values = [j0] + [at(g) for g in FW_GRID[1:]]
        coef = np.polyfit(FW_GRID, values, len(FW_GRID) - 1)
        fine = np.linspace(0.0, 1.0, 201)
        best = float(fine[int(np.argmax(np.polyval(coef, fine)))])
        j_best = at(best) if best not in FW_GRID else values[FW_GRID.index(best)]
        k = int(np.argmax(values))
        if values[k] > j_best:  # the fit missed: take the best evaluated step
            best, j_best = FW_GRID[k], values[k]
        return best, j_best


@torch.no_grad()
def _project(maps, solver) -> list[dict[str, torch.Tensor]]:
    return [{p: torch.as_tensor(np.asarray(solve(m.double().numpy(), pick_solver(solver, n=m.shape[0]))),
                                dtype=torch.long) for p, m in q.items()} for q in maps]


def cycle_consistent_perms(spec: PermutationSpec, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                           weights: Sequence[float], start: Sequence[Mapping[str, torch.Tensor]],
                           max_iter: int = 100, tol: float = 1e-6, solver: str = "auto", progress: bool = False):
    """Every member's permutation into the universe (member 0's frame, ``start[0]`` the identity); returns
    (perms, Frank-Wolfe steps, J per step). ``start``: the permutations the relaxed maps start from (a vertex);
    the projected result replaces them only if its objective is at least theirs."""
    names = unique_tensors(spec, state_dicts[0])
    tensors = [{k: sd[k].double() for k in names} for sd in state_dicts]
    eye = {p: torch.eye(n, dtype=torch.float64) for p, n in spec.perm_sizes.items()}
    maps = [{p: e[q[p]] for p, e in eye.items()} for q in start]
    history, steps = [], 0
    for step in tqdm(range(max_iter), desc="Frank-Wolfe", disable=not progress, leave=False):
        free = [{p: m.requires_grad_(True) for p, m in q.items()} for q in maps[1:]]
        j = relaxed_objective(spec, tensors, [maps[0], *free], weights)
        grads = torch.autograd.grad(j, [m for q in free for m in q.values()])
        maps = [maps[0]] + [{p: m.detach() for p, m in q.items()} for q in free]
        it = iter(grads)
        dirs, gap = [{p: torch.zeros_like(e) for p, e in eye.items()}], 0.0
        for q in maps[1:]:
            d = {}
            for p, m in q.items():
                g = next(it)
                d[p] = _vertex(g, solver) - m
                gap += float((g * d[p]).sum())
            dirs.append(d)
        j0 = float(j.detach())
        history.append(j0)
        steps = step + 1
        if gap <= tol * max(abs(j0), 1e-12):
            break
        gamma, _ = _line_search(spec, tensors, maps, dirs, weights, j0)
        if gamma <= 0.0:
            break
        maps = [{p: m[p] + gamma * d[p] for p in m} for m, d in zip(maps, dirs)]
    found = _project(maps, solver)
    if _hard_objective(spec, tensors, found, eye, weights) < _hard_objective(spec, tensors, start, eye, weights):
        found = [dict(q) for q in start]
    return found, steps, history


def _hard_objective(spec, tensors, perms, eye, weights) -> float:
    with torch.no_grad():
        return float(relaxed_objective(spec, tensors, [{p: e[q[p]] for p, e in eye.items()} for q in perms], weights))
