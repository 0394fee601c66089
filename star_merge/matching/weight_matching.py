"""Weight matching (Ainsworth et al., git re-basin): align model B to model A modulo permutation.

Coordinate descent over the spec's permutations, visited in a seeded random order (or, ``order="colored"``,
class by class of independent permutations in a fixed order, see :func:`colour_classes`); each visit solves
one linear assignment problem (``solvers.py``: scipy, lapjv or a CUDA batch solver, all exact) that
maximises the summed inner product of every tensor touching that permutation, the others held fixed.
Stops after a full sweep in which no permutation improves the objective. The descent itself is
:mod:`.descent` (shared with the population alignment: one model is a batch of one), its cost-matrix
terms :mod:`.terms`, its solves :func:`.solvers.solve_group`; this module adds the restarts and presolve.

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
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch

from ..errors import UserError
from ..groups import MAP_DTYPE, PERMUTATION, random_map
from ..spec import PermutationSpec, SpecError, group_kind, identity_permutation, permute_tensor
from .descent import ORDERS, DescentOptions, DescentStats, MatchingProblem, check_order, colour_classes, descend
from .solvers import check_solver, is_permutation, pick_solver, solve
from .terms import to_blocks

__all__ = ["MatchingResult", "weight_matching", "check_state_dicts", "perm_objective", "colour_classes", "ORDERS",
           "unique_tensors", "sorted_rows_start", "is_permutation", "PRESOLVE_INCOMING"]

# presolve: the factor of each unit's incoming weights in the weighted objective (see the module docstring).
PRESOLVE_INCOMING = 16.0


@dataclass
class MatchingResult:
    """``perm``: permutation name -> LongTensor; ``apply_permutation(spec, perm, sd_b)`` is B aligned to A.

    ``objective``: sum over the permuted tensors of <A, perm(B)> after alignment (tied tensors counted
    once). ``iterations``: full sweeps made (all runs). ``history``: the objective after each sweep.
    ``restarts``: descents run after the first (0: no restart was needed or allowed). ``counts``: the
    assignment problems solved per backend (``"argmax"``: rows' maxima in distinct columns, no solver).
    """

    perm: dict[str, torch.Tensor]
    objective: float
    iterations: int
    history: list[float] = field(default_factory=list)
    restarts: int = 0
    counts: dict[str, int] = field(default_factory=dict)


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


def unique_tensors(spec: PermutationSpec, sd: Mapping[str, torch.Tensor]) -> list[str]:
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


def perm_objective(spec, perm, sd_a, sd_b, names=None, dtype=torch.float32) -> float:
    names = names if names is not None else unique_tensors(spec, sd_a)
    total = 0.0
    for k in names:
        wb = permute_tensor(sd_b[k], spec.axes_to_perm[k], perm)
        total += float(torch.sum(sd_a[k].to(dtype) * wb.to(dtype)).item())
    return total


def sorted_rows_start(spec, perm_to_axes, A, B, solver: str = "scipy") -> dict[str, torch.Tensor]:
    """Each permutation solved alone on its units' weights sorted within each unit.

    Sorting a unit's weights removes every other permutation's effect, so this needs no order. By the
    rearrangement inequality <sort a, sort b> >= <a, π b>, with equality for an exact copy at the true
    permutation: on a permuted copy with distinct units this start is already the answer.
    """
    out = {}
    for p, axes in perm_to_axes.items():
        n = spec.perm_sizes[p]
        if group_kind(spec, p) != PERMUTATION:  # sorting does not remove an orthogonal map: start at the identity
            out[p] = identity_permutation(spec.subset([k for k, _, _ in axes]))[p].to(next(iter(A.values())).device)
            continue
        cost = sum(
            torch.sort(to_blocks(A[k], ax, ap, n), dim=1).values @ torch.sort(to_blocks(B[k], ax, ap, n), dim=1).values.T
            for k, ax, ap in axes
        )
        out[p] = torch.as_tensor(solve(cost.double().cpu().numpy(), pick_solver(solver, n=n)), device=cost.device)
    return out


@dataclass
class _Run:
    """One weight-matching call's problem (a batch of one model) and its settings."""

    problem: MatchingProblem
    options: DescentOptions
    counts: dict | None
    names: list[str]

    def descend(self, start: dict[str, torch.Tensor], gen: torch.Generator, track: bool = True,
                weights=None) -> tuple[dict[str, torch.Tensor], list[float], int]:
        """The descent from ``start`` (not modified): (its result, the objective after each sweep if
        ``track``, sweeps)."""
        perms = {p: v[None].clone() for p, v in start.items()}
        history: list[float] = []
        A, B = self.problem.A, {k: v[0] for k, v in self.problem.B.items()}
        dtype = next(iter(A.values())).dtype if A else torch.float32
        on_sweep = (lambda b: history.append(perm_objective(  # noqa: E731
            self.problem.spec, {p: v[0] for p, v in perms.items()}, A, B, self.names, dtype))) if track else None
        stats = DescentStats()
        options = replace(self.options, weights=weights, on_sweep=on_sweep)
        sweeps = descend(self.problem, perms, [gen], options, stats)[0]
        if self.counts is not None:
            for s_, c in stats.solvers.items():
                self.counts[s_] = self.counts.get(s_, 0) + c
        return {p: v[0] for p, v in perms.items()}, history, sweeps


def _prepare(spec, sd_a, sd_b, init_perm, cache_elements):
    """A and B in the matching dtype on A's device (tied tensors once), the problem, the start."""
    names = unique_tensors(spec, sd_a)
    name_set = set(names)
    dtype = torch.float64 if any(sd_a[k].dtype == torch.float64 for k in names) else torch.float32
    A = {k: sd_a[k].to(dtype) for k in names}
    B = {k: sd_b[k].to(device=A[k].device, dtype=dtype)[None] for k in names}
    perm_to_axes = {
        p: [(k, ax, ap) for k, ax, ap in axes if k in name_set] for p, axes in spec.perm_to_axes.items()
    }
    device = next(iter(A.values())).device if A else torch.device("cpu")
    perm = {p: v.clone().to(device) for p, v in (init_perm or identity_permutation(spec)).items()}
    if set(perm) != set(spec.perm_sizes):
        raise SpecError("init_perm must name exactly the spec's permutations")
    for p in spec.group_kinds:  # orthogonal maps: float64 (the descent's snapshots and solves)
        perm[p] = perm[p].to(MAP_DTYPE)
    problem = MatchingProblem.build(spec, A, B, perm_to_axes, cache_elements)
    return names, problem, perm


def _restarts(run: _Run, best, best_obj, seed, restarts, restart_similarity, solver):
    """Further descents while the result is a near copy of A that is not exact (module docstring)."""
    problem, names = run.problem, run.names
    A, B = problem.A, {k: v[0] for k, v in problem.B.items()}
    bound = math.sqrt(sum(float(A[k].double().square().sum()) for k in names)) * math.sqrt(
        sum(float(B[k].double().square().sum()) for k in names))
    done, history, iterations = 0, [], 0
    restart_gen = torch.Generator().manual_seed(int(seed) + 0x5EED)
    while (done < restarts and bound > 0 and best_obj < bound * (1 - 1e-5)
           and best_obj >= restart_similarity * bound):
        if done == 0:
            start = sorted_rows_start(problem.spec, problem.perm_to_axes, A, B, solver)
        else:  # perturb the best: one permutation re-drawn at random
            start = {p: v.clone() for p, v in best.items()}
            names_ = sorted(start)
            q = names_[int(torch.randint(len(names_), (1,), generator=restart_gen))]
            start[q] = random_map(group_kind(problem.spec, q), problem.spec.perm_sizes[q], restart_gen).to(problem.device)
        done += 1
        found, h, it = run.descend(start, torch.Generator().manual_seed(int(seed) + 1000003 * done))
        history += h
        iterations += it
        if h[-1] > best_obj:
            best, best_obj = found, h[-1]
    return best, best_obj, history, iterations, done


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
    seed then only drives the restarts). The descent is :mod:`.descent`'s, on a batch of one model.
    """
    if validate:
        check_state_dicts(spec, sd_a, sd_b)
    if max_iter < 1:
        raise UserError("max_iter must be >= 1")
    check_solver(solver)
    check_order(order)
    names, problem, perm = _prepare(spec, sd_a, sd_b, init_perm, cache_elements)
    found: dict = {}
    run = _Run(problem, DescentOptions(max_iter=max_iter, tol=tol, solver=solver, order=order), found, names)
    order_gen = torch.Generator().manual_seed(int(seed))
    presweeps = 0
    if presolve:
        weights = {(k, ax): PRESOLVE_INCOMING for p, axes in problem.perm_to_axes.items() for k, ax, _ in axes
                   if ax == 0 and problem.A[k].ndim >= 2}
        perm, _, presweeps = run.descend(perm, order_gen, track=False, weights=weights)
    perm, history, iterations = run.descend(perm, order_gen, track=track)
    if track:
        perm, objective, h, it, done = _restarts(run, perm, history[-1], seed, restarts, restart_similarity, solver)
    else:
        objective, h, it, done = math.nan, [], 0, 0
    if counts is not None:
        for s_, c in found.items():
            counts[s_] = counts.get(s_, 0) + c
    return MatchingResult(perm={p: v.cpu() for p, v in perm.items()}, objective=objective,
                          iterations=presweeps + iterations + it, history=history + h, restarts=done,
                          counts=dict(found))
