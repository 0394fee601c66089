"""Weight matching (Ainsworth et al., git re-basin): align model B to model A modulo permutation.

Coordinate descent over the spec's permutations, visited in a seeded random order (or, ``order="colored"``,
class by class of independent permutations in a fixed order, see :func:`colour_classes`); each visit solves
one linear assignment problem (``solvers.py``: scipy, lapjv or a CUDA batch solver, all exact) that
maximises the summed inner product of every tensor touching that permutation, the others held fixed.
Stops after a full sweep in which no permutation improves the objective.

Coordinate descent can stop in a local optimum. When the result is a near copy of A (its objective is
at least ``restart_similarity`` of the Cauchy-Schwarz bound ||A||·||B||, which only an exact copy
reaches) but not an exact one, it restarts: first from the sorted-rows start (each permutation solved
alone on its units' weights sorted, which no other permutation can change), then from the best result
with one permutation re-drawn at random; the best objective wins.

``presolve=True`` (for unrelated models, e.g. independent inits) first runs the same descent on a
weighted objective in which each unit's incoming weights (axis 0 of its weight matrices and kernels)
count ``PRESOLVE_INCOMING`` times as much as its outgoing ones, then continues on the true objective from
the result. Weighting the incoming side makes each permutation follow mostly from its own layer given
the previous one (a layer-by-layer match), a better basin than the identity start's: measured on
star-mlp 3x512 / 3x1024 / 3x2048 random inits, +3.6% / +2.3% / +1.4% objective in fewer sweeps
(docs/performance.md). rebasin 0.0.47 stumbles on a similar weighting (its graph lists a layer's own
weight twice as often as the next layer's), which is why it beat the plain descent. Off by default: it
changes results wherever the objective has several local optima.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from ..spec import AxisPerm, PermutationSpec, SpecError, expand_index, identity_permutation, permute_tensor
from .solvers import check_solver, pick_solver, solve

__all__ = ["MatchingResult", "weight_matching", "check_state_dicts", "perm_objective", "colour_classes", "ORDERS"]

# Visiting orders of the coordinate descent (see ``weight_matching``'s ``order``).
ORDERS = ("random", "colored")

# presolve: the factor of each unit's incoming weights in the weighted objective (see the module docstring).
PRESOLVE_INCOMING = 16.0


@dataclass
class MatchingResult:
    """``perm``: permutation name -> LongTensor; ``apply_permutation(spec, perm, sd_b)`` is B aligned to A.

    ``objective``: sum over the permuted tensors of <A, perm(B)> after alignment (tied tensors counted
    once). ``iterations``: full sweeps made (all runs). ``history``: the objective after each sweep.
    ``restarts``: descents run after the first (0: no restart was needed or allowed).
    """

    perm: dict[str, torch.Tensor]
    objective: float
    iterations: int
    history: list[float] = field(default_factory=list)
    restarts: int = 0


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


def is_permutation(cols: torch.Tensor) -> torch.Tensor | bool:
    """Whether every row of ``cols`` ([..., n] column indices in 0..n-1) holds n distinct columns."""
    hits = torch.zeros(cols.shape, dtype=torch.bool, device=cols.device).scatter_(-1, cols, True)
    out = hits.all(dim=-1)
    return bool(out) if out.ndim == 0 else out


def perm_objective(spec, perm, sd_a, sd_b, names=None, dtype=torch.float32) -> float:
    names = names if names is not None else _unique_tensors(spec, sd_a)
    total = 0.0
    for k in names:
        wb = permute_tensor(sd_b[k], spec.axes_to_perm[k], perm)
        total += float(torch.sum(sd_a[k].to(dtype) * wb.to(dtype)).item())
    return total


def _neighbours(spec: PermutationSpec, perm_to_axes) -> dict[str, list[str]]:
    """Permutation -> the other permutations sharing a tensor with it (its cost matrix depends on them)."""
    return {
        p: sorted({a.perm for k, ax, _ in axes for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax} - {p})
        for p, axes in perm_to_axes.items()
    }


def colour_classes(neighbours: Mapping[str, list[str]]) -> list[list[str]]:
    """The permutations split into classes of mutually independent ones (a colouring of the graph whose
    edges join permutations sharing a tensor), in a fixed order: in colour order, so the class of the most
    connected permutation (a residual stream: the hub) comes first; names sorted within a class.

    Within a class no permutation's cost matrix depends on another's, so solving a class's permutations
    one after the other (in any order) gives exactly what solving them all at once gives: one block of a
    block coordinate ascent, which the batched population alignment runs as one round. Greedy colouring,
    most-connected permutation first (ResNet-18: 3 classes for 12 permutations; an MLP or a transformer: 2).
    Which colouring and which order matter (docs/performance.md, paired against the random order): a
    size-aware colouring ended 0.73% lower on 50 ResNet-18 anchors, and visiting the largest class first
    (the per-layer permutations before the residual stream) 0.12-0.15% lower on every one of 10 GPT-2 and
    BERT pairs; this colouring and order are within noise of the random order or above it.
    """
    colour: dict[str, int] = {}
    for p in sorted(neighbours, key=lambda q: (-len(neighbours[q]), q)):
        used = {colour[q] for q in neighbours[p] if q in colour}
        colour[p] = next(c for c in range(len(neighbours) + 1) if c not in used)
    classes: dict[int, list[str]] = {}
    for p in sorted(colour):
        classes.setdefault(colour[p], []).append(p)
    return [classes[c] for c in sorted(classes)]


def sweep_order(order: str, perm_names: list[str], classes: list[list[str]] | None, gen: torch.Generator) -> list[list[str]]:
    """One sweep's visits as a list of classes: ``random`` draws a seeded order of single permutations
    (``perm_names`` sorted; the draw ``weight_matching`` always made), ``colored`` the colour classes in
    their fixed order (no draw)."""
    if order == "colored":
        return [list(c) for c in classes]
    return [[perm_names[i]] for i in torch.randperm(len(perm_names), generator=gen).tolist()]


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"matching order {order!r} is not one of {', '.join(ORDERS)}")


def sorted_rows_start(spec, perm_to_axes, A, B, solver: str = "scipy") -> dict[str, torch.Tensor]:
    """Each permutation solved alone on its units' weights sorted within each unit.

    Sorting a unit's weights removes every other permutation's effect, so this needs no order. By the
    rearrangement inequality <sort a, sort b> >= <a, π b>, with equality for an exact copy at the true
    permutation: on a permuted copy with distinct units this start is already the answer.
    """
    out = {}
    for p, axes in perm_to_axes.items():
        n = spec.perm_sizes[p]
        cost = sum(
            torch.sort(_to_blocks(A[k], ax, ap, n), dim=1).values @ torch.sort(_to_blocks(B[k], ax, ap, n), dim=1).values.T
            for k, ax, ap in axes
        )
        out[p] = torch.as_tensor(solve(cost.double().cpu().numpy(), pick_solver(solver, n=n)), device=cost.device)
    return out


def _updated_term(spec, k, ax, ap, n, A, B, perm, cached, key, others):
    """The cached term of (tensor k, axis ax) updated for a change of ONE other axis's permutation.

    term = A_blocks @ π(B)_blocks^T sums over the other axes' elements; when one other permutation q
    moved only the units S, only the slices of π(B) at S along q's axis changed, so
    term += A[S]_blocks @ (B_new[S] - B_old[S])_blocks^T (a rank-|S| update, 2·n²·|S| flops instead of
    2·n²·size(q)). ``None`` when that does not apply (nothing cached, several axes changed, many units
    moved): the caller recomputes the term.
    """
    if cached is None or len(cached) < 3:
        return None
    changed = [i for i, old, new in zip(others, cached[0], key) if old != new]
    if len(changed) != 1:
        return None
    i = changed[0]
    a = spec.axes_to_perm[k][i]
    old_p, new_p = cached[2][i], perm[a.perm]
    units = (old_p != new_p).nonzero().flatten()
    size = new_p.numel()
    if units.numel() == 0 or units.numel() > size // 4:
        return None
    pos = (units[:, None] * a.block + torch.arange(a.block, device=units.device)).reshape(-1)
    pos = (torch.arange(a.repeat, device=units.device)[:, None] * size * a.block + pos).reshape(-1)
    w = B[k]
    for j, other in enumerate(spec.axes_to_perm[k]):  # the axes other than ax and i, permuted as now
        if other is not None and j not in (ax, i):
            w = torch.index_select(w, j, expand_index(perm[other.perm].to(w.device), other))
    diff = (torch.index_select(w, i, expand_index(new_p, a)[pos]) - torch.index_select(w, i, expand_index(old_p, a)[pos]))
    a_sel = _to_blocks(torch.index_select(A[k], i, pos), ax, ap, n)
    return cached[1] + a_sel @ _to_blocks(diff, ax, ap, n).T


def _descend(spec, perm_to_axes, neighbours, A, B, a_blocks, perm, order_gen, max_iter, tol, solver, terms, budget,
             counts=None, track=True, weights=None, order="random"):
    """Coordinate descent from ``perm`` (updated in place); returns (history, sweeps).

    ``order``: each sweep's visiting order (:func:`sweep_order`).
    ``counts`` (a dict) receives the assignment problems solved per backend; ``track=False`` skips the
    objective after each sweep (history stays empty). ``weights``: (tensor, axis) -> factor of that
    term in the cost matrices (the presolve's weighted objective); ``None``: the objective itself.
    """
    names = list(A)
    dtype = next(iter(A.values())).dtype if A else torch.float32
    device = next(iter(A.values())).device if A else torch.device("cpu")
    # The cost matrix of permutation p depends only on the permutations sharing a tensor with it. When
    # none of those changed since p was last solved, its matrix is the same and p is already optimal
    # for it: the solve is skipped (same result, fewer assignment problems near convergence).
    version = {p: 0 for p in spec.perm_sizes}
    solved_at: dict[str, tuple] = {}
    # Cached terms are keyed by versions, which restart at 0: an earlier run's term stays valid when the
    # permutations it was built with (its snapshot) are the current ones (key 0, as if built now); one
    # built with other permutations gets key -1 on those axes (updated or recomputed when first used).
    for (k, ax), (_, term, snap) in list(terms.items()):
        terms[(k, ax)] = (tuple(0 if torch.equal(old, perm[spec.axes_to_perm[k][i].perm]) else -1
                                for i, old in snap.items()), term, snap)
    cache_budget = [budget - sum(t.numel() for _, t, _ in terms.values())]
    perm_names = sorted(spec.perm_sizes)
    classes = colour_classes(neighbours) if order == "colored" else None
    history: list[float] = []
    iterations = 0
    for iterations in range(1, max_iter + 1):
        improved = False
        for p in [q for c in sweep_order(order, perm_names, classes, order_gen) for q in c]:
            state = tuple(version[q] for q in neighbours[p])
            if solved_at.get(p) == state:
                continue
            solved_at[p] = state
            n = spec.perm_sizes[p]
            cost = torch.zeros((n, n), dtype=dtype, device=device)
            for k, ax, ap in perm_to_axes[p]:
                # One tensor's term changes only when a permutation on its other axes changes: cached,
                # and updated in place when that change moved few units.
                axes_k = spec.axes_to_perm[k]
                others = [i for i, a in enumerate(axes_k) if a is not None and i != ax]
                key = tuple(version[axes_k[i].perm] for i in others)
                cached = terms.get((k, ax))
                if cached is None or cached[0] != key:
                    snap = {i: perm[axes_k[i].perm] for i in others}
                    term = _updated_term(spec, k, ax, ap, n, A, B, perm, cached, key, others)
                    if term is None:
                        wb = permute_tensor(B[k], axes_k, perm, except_axis=ax)
                        term = a_blocks[(k, ax)] @ _to_blocks(wb, ax, ap, n).T
                    if cached is not None:  # replace the stale entry (same size)
                        terms[(k, ax)] = (key, term, snap)
                    elif cache_budget[0] >= term.numel():
                        cache_budget[0] -= term.numel()
                        terms[(k, ax)] = (key, term, snap)
                    cached = (key, term, snap)
                cost += cached[1] if weights is None else weights.get((k, ax), 1.0) * cached[1]
            row_max = cost.argmax(dim=1)
            share = float((row_max == perm[p]).float().mean())
            if share == 1.0:
                continue  # every row already takes its own maximum: optimal, no assignment problem needed
            cost_np = cost.double().cpu().numpy()
            old = perm[p].cpu().numpy()
            old_val = cost_np[np.arange(n), old].sum()
            if is_permutation(row_max):
                # the rows' maxima fall in distinct columns: that assignment reaches the bound Σ_i max_j C_ij,
                # so it is optimal (the one every exact solver returns, ties aside): no problem to solve
                col, picked = row_max.cpu().numpy(), "argmax"
            else:
                picked = pick_solver(solver, share, n=n)
                col = solve(cost_np, picked)
            if counts is not None:
                counts[picked] = counts.get(picked, 0) + 1
            new_val = cost_np[np.arange(n), col].sum()
            if new_val > old_val + tol * max(1.0, abs(old_val)):
                perm[p] = torch.as_tensor(col, dtype=torch.long, device=device)
                version[p] += 1
                improved = True
        if track:
            history.append(perm_objective(spec, perm, A, B, names, dtype))
        if not improved:
            break
    return history, iterations


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
    solver: str = "auto",
    restarts: int = 3,
    restart_similarity: float = 0.5,
    counts: dict | None = None,
    track: bool = True,
    presolve: bool = False,
    order: str = "random",
) -> MatchingResult:
    """Find the permutation of B's units that best aligns B to A (maximises Σ <A, π(B)>).

    Cost matrices are built with torch on the tensors' device (a GPU when they are there) in float32,
    or float64 for float64 weights, whatever the stored dtype (bf16 works). ``init_perm`` warm-starts
    the search (e.g. last epoch's alignment). Deterministic for a given ``seed``. Per-tensor terms of the
    cost matrices are cached between sweeps up to ``cache_elements`` numbers (512 MiB in float32).
    ``solver``: ``auto | scipy | lapjv | cuda`` (see :mod:`.solvers`; every one is exact).
    ``restarts``: at most this many further descents when the result is a near copy of A (objective
    >= ``restart_similarity`` · ||A||·||B||) that is not exact; 0 turns restarts off. ``counts``: a dict
    that receives the number of assignment problems solved per backend. ``track=False`` skips computing
    the objective after each sweep (``objective`` is then NaN, ``history`` empty and no restart is made).
    ``presolve``: first descend on a weighted objective in which each unit's incoming weights (axis 0 of
    its tensors of two or more dimensions) count ``PRESOLVE_INCOMING`` times, then continue on the
    objective from there (see the module docstring); ``iterations`` counts both descents.
    ``order``: ``random`` (default) visits the permutations in a seeded random order each sweep;
    ``colored`` visits the classes of :func:`colour_classes` in a fixed order (each class one block of
    independent permutations; what the batched population alignment runs as one round per class; the
    seed then only drives the restarts).
    """
    if validate:
        check_state_dicts(spec, sd_a, sd_b)
    if max_iter < 1:
        raise ValueError("max_iter must be >= 1")
    check_solver(solver)
    check_order(order)
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
    neighbours = _neighbours(spec, perm_to_axes)
    terms: dict = {}
    order_gen = torch.Generator().manual_seed(int(seed))
    run = lambda start, gen: _descend(  # noqa: E731
        spec, perm_to_axes, neighbours, A, B, a_blocks, start, gen, max_iter, tol, solver, terms, int(cache_elements),
        counts, track, order=order,
    )
    presweeps = 0
    if presolve:
        weights = {(k, ax): PRESOLVE_INCOMING for p, axes in perm_to_axes.items() for k, ax, _ in axes
                   if ax == 0 and A[k].ndim >= 2}
        _, presweeps = _descend(spec, perm_to_axes, neighbours, A, B, a_blocks, perm, order_gen, max_iter, tol,
                                solver, terms, int(cache_elements), counts, False, weights, order)
    history, iterations = run(perm, order_gen)
    iterations += presweeps
    if not track:
        return MatchingResult(perm={p: v.cpu() for p, v in perm.items()}, objective=math.nan, iterations=iterations)
    best, best_obj = perm, history[-1]
    bound = math.sqrt(sum(float(A[k].double().square().sum()) for k in names)) * math.sqrt(
        sum(float(B[k].double().square().sum()) for k in names))
    done = 0
    restart_gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
    while (done < restarts and bound > 0 and best_obj < bound * (1 - 1e-5)
           and best_obj >= restart_similarity * bound):
        if done == 0:
            start = sorted_rows_start(spec, perm_to_axes, A, B, solver)
        else:  # perturb the best: one permutation re-drawn at random
            start = {p: v.clone() for p, v in best.items()}
            names_ = sorted(start)
            q = names_[int(torch.randint(len(names_), (1,), generator=restart_gen))]
            start[q] = torch.randperm(spec.perm_sizes[q], generator=restart_gen).to(device)
        done += 1
        h, it = run(start, torch.Generator().manual_seed(int(seed) + 1000003 * done))
        history += h
        iterations += it
        if h[-1] > best_obj:
            best, best_obj = start, h[-1]
    best = {p: v.cpu() for p, v in best.items()}
    return MatchingResult(perm=best, objective=best_obj, iterations=iterations, history=history, restarts=done)
