"""Merging N models into one without training: align them modulo permutation, then average.

Three ways to put every member into one frame, all on the one weight-matching engine
(:func:`~.weight_matching.weight_matching`; the cycle-consistent one on its terms and solvers):

- ``reference``: every member weight-matched to member 0, then averaged (what ``align_population`` does).
- ``mergemany`` (Ainsworth et al. 2023, Algorithm 3): in a seeded random order each sweep, each member is
  re-aligned (warm-started from its current permutation) to the weighted mean of the others in their current
  frames, until a sweep changes no permutation (or ``max_iter`` sweeps).
- ``cycle`` (C2M3, Crisostomi et al. 2024): every member's map into a shared universe optimised jointly by
  Frank-Wolfe over doubly stochastic matrices (:mod:`.cycle`), from the ``reference`` alignment.

Every method gives member i one permutation ``perms[i]`` into the merged frame, so the pairwise map i -> j is
``perms[j]^-1 ∘ perms[i]`` and a cycle i -> j -> k -> i composes to the identity by construction
(:meth:`MergeRecord.pairwise`). Member weights (``weights``, default equal) weight the average and, for
``mergemany`` and ``cycle``, the objective (pair (i, j) counts ``w_i w_j``). Data-free: statistics repair
(BatchNorm reset, REPAIR) is the evaluation floor's (:mod:`star_merge.evaluation.repair`).

``symmetry="orthogonal"`` (``reference``, ``mergemany``): the members are folded (:func:`.align.in_symmetry_form`,
the aligner's folding: norm weights 1; members already folded are used as they are), matched with orthogonal maps where the family declares them (the residual
stream) by the same engine, and averaged in folded form; the merge is a folded checkpoint of the family's class.
``cycle`` refuses it: its Frank-Wolfe runs over doubly stochastic relaxations of permutations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..groups import check_symmetry
from ..spec import PermutationSpec, apply_permutation, compose_permutations, identity_permutation, inverse_permutation
from .weight_matching import check_state_dicts, unique_tensors, weight_matching

__all__ = ["MERGE_METHODS", "MergeError", "check_merge_method", "MergeRecord", "merge_models", "average_state_dicts", "member_weights",
           "universe_objective"]

#: The ways :func:`merge_models` aligns the members before averaging.
MERGE_METHODS = ("mergemany", "cycle", "reference")


class MergeError(UserError):
    """A merge cannot be done as asked (unknown method, too few members, bad weights)."""


@dataclass
class MergeRecord:
    """How a merge was made. ``perms[i]``: member i's permutation into the merged frame (CPU LongTensors);
    ``iterations``: sweeps (``mergemany``), Frank-Wolfe steps (``cycle``) or 0 (``reference``); ``objective``:
    Σ_{i<j} w_i w_j <π_i(θ_i), π_j(θ_j)> over the permuted tensors; ``seconds``: wall time of the alignment."""

    method: str
    perms: list[dict[str, torch.Tensor]]
    weights: list[float]
    iterations: int = 0
    objective: float = float("nan")
    seconds: float = 0.0
    history: list[float] = field(default_factory=list)
    symmetry: str = "permutation"

    def pairwise(self, i: int, j: int) -> dict[str, torch.Tensor]:
        """The map from member i's frame to member j's: ``apply_permutation(spec, it, θ_i)`` is θ_i in j's
        units (through the merged frame: π_j^-1 ∘ π_i)."""
        return compose_permutations(inverse_permutation(self.perms[j]), self.perms[i])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "symmetry": self.symmetry, "members": len(self.perms),
                "weights": self.weights, "iterations": self.iterations, "objective": self.objective, "seconds": self.seconds}


def member_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Weights normalised to sum 1 (equal when ``None``); refuses a wrong count, negative or all-zero weights."""
    if weights is None:
        return [1.0 / n] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise MergeError(f"got {len(w)} weights for {n} members; pass one weight per member")
    if any(not (x >= 0) for x in w) or sum(w) <= 0:
        raise MergeError(f"member weights must be >= 0 and not all zero, got {w}")
    total = sum(w)
    return [x / total for x in w]


def average_state_dicts(state_dicts: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Σ_i w_i θ_i for floating tensors (accumulated in float64, stored in member 0's dtype); integer tensors
    (``num_batches_tracked``) copied from member 0."""
    out = {}
    for k, v in state_dicts[0].items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        acc = torch.zeros(v.shape, dtype=torch.float64)
        for w, sd in zip(weights, state_dicts):
            if w:
                acc += w * sd[k].detach().cpu().double()
        out[k] = acc.to(v.dtype)
    return out


def universe_objective(spec: PermutationSpec, aligned: Sequence[Mapping[str, torch.Tensor]], weights) -> float:
    """Σ_{i<j} w_i w_j <θ_i, θ_j> over the permuted tensors of members already in one frame."""
    names = unique_tensors(spec, aligned[0])
    total = 0.0
    for k in names:
        s = sum(w * sd[k].double() for w, sd in zip(weights, aligned))
        total += 0.5 * (float(s.square().sum()) - sum(w * w * float(sd[k].double().square().sum())
                                                       for w, sd in zip(weights, aligned)))
    return total


def _state_dict(member) -> dict[str, torch.Tensor]:
    sd = member.state_dict() if isinstance(member, torch.nn.Module) else member
    return {k: v.detach().cpu() for k, v in sd.items()}


def _mean_of_others(aligned, weights, i) -> dict[str, torch.Tensor]:
    rest = sum(w for j, w in enumerate(weights) if j != i)
    if rest <= 0:  # every other member has weight 0: align to them equally
        others = [1.0 if j != i else 0.0 for j in range(len(aligned))]
        rest = float(len(aligned) - 1)
    else:
        others = [w if j != i else 0.0 for j, w in enumerate(weights)]
    return average_state_dicts(aligned, [w / rest for w in others])


def check_merge_method(method: str, symmetry: str = "permutation") -> None:
    """Refuses an unknown method or symmetry, and ``cycle`` with orthogonal maps."""
    if method not in MERGE_METHODS:
        raise MergeError(f"unknown merge method {method!r}; use one of {', '.join(MERGE_METHODS)}")
    if check_symmetry(symmetry) == "orthogonal" and method == "cycle":
        raise MergeError("method 'cycle' merges modulo permutations only (Frank-Wolfe over permutation matrices); "
                         "use --method mergemany or reference with --symmetry orthogonal")


def _same_element(new: torch.Tensor, old: torch.Tensor) -> bool:
    """A permutation unchanged exactly; an orthogonal map (float, re-solved each time) to 1e-6."""
    if new.is_floating_point():
        return bool(torch.allclose(new.double(), old.double(), rtol=0.0, atol=1e-6))
    return torch.equal(new, old)


def _members_in_form(members, symmetry: str) -> list:
    """The members as ``symmetry`` merges them: themselves, or folded models for ``orthogonal``."""
    if symmetry == "permutation":
        return list(members)
    from ..adapters.folding import can_fold, is_folded
    from .align import in_symmetry_form

    if not all(isinstance(m, torch.nn.Module) for m in members):
        raise MergeError("symmetry 'orthogonal' merges models (they are folded first): pass the models, not state dicts")
    config = getattr(members[0], "config", None)
    if config is None or not can_fold(config):
        return list(members)  # no folded form: the family's groups stay permutations
    return [m if is_folded(config, m.state_dict()) else in_symmetry_form(m, symmetry) for m in members]


def _reference(spec, sds, weights, seed, max_iter, progress):
    perms = [identity_permutation(spec)]
    for i in tqdm(range(1, len(sds)), desc="aligning to member 0", disable=not progress, leave=False):
        perms.append(weight_matching(spec, sds[0], sds[i], seed=seed + i, max_iter=max_iter, validate=False).perm)
    return perms, 0, []


def _mergemany(spec, sds, weights, seed, max_iter, progress):
    """Algorithm 3 of git re-basin: re-align each member to the mean of the others until nothing changes."""
    perms = [identity_permutation(spec) for _ in sds]
    aligned = [dict(sd) for sd in sds]
    gen = torch.Generator().manual_seed(int(seed))
    history, sweeps = [], 0
    bar = tqdm(total=max_iter, desc="MergeMany sweeps", disable=not progress, leave=False)
    for sweep in range(max_iter):
        sweeps += 1
        changed = False
        for i in torch.randperm(len(sds), generator=gen).tolist():
            target = _mean_of_others(aligned, weights, i)
            res = weight_matching(spec, target, sds[i], seed=seed + 7919 * sweep + i, max_iter=max_iter,
                                  init_perm=perms[i], validate=False)
            if any(not _same_element(res.perm[p], perms[i][p]) for p in perms[i]):
                changed = True
                perms[i] = res.perm
                aligned[i] = apply_permutation(spec, res.perm, sds[i])
        history.append(universe_objective(spec, aligned, weights))
        bar.update(1)
        if not changed:
            break
    bar.close()
    return perms, sweeps, history


def merge_models(
    members: Sequence,
    method: str = "mergemany",
    weights: Sequence[float] | None = None,
    seed: int = 0,
    spec: PermutationSpec | None = None,
    max_iter: int = 100,
    progress: bool = False,
    symmetry: str = "permutation",
) -> tuple[dict[str, torch.Tensor], MergeRecord]:
    """Merge ``members`` (models or state dicts of one architecture, at least two) into one state dict.

    Returns (the merged state dict on the CPU, the :class:`MergeRecord`). ``method``: ``mergemany`` |
    ``cycle`` | ``reference`` (module docstring); ``weights``: one per member (normalised), default equal;
    ``spec``: ``None`` takes member 0's (:func:`~star_merge.adapters.spec_for`). The merged frame is member
    0's for ``reference`` and ``cycle`` (its map is the identity); for ``mergemany`` it is wherever the sweeps
    lead. Same ``seed`` -> same result. The merged model carries the members' averaged BatchNorm statistics:
    reset them over data (``reset_bn_stats``) or repair it (``repair_model``) before judging it.
    ``symmetry``: ``permutation``, or ``orthogonal`` (module docstring: the merge, and ``perms``, are in folded form).
    """
    check_merge_method(method, symmetry)
    if len(members) < 2:
        raise MergeError(f"merging needs at least two members, got {len(members)}")
    if max_iter < 1:
        raise MergeError("max_iter must be >= 1")
    w = member_weights(weights, len(members))
    members = _members_in_form(members, symmetry)
    if spec is None:
        from ..adapters import spec_for

        if not isinstance(members[0], torch.nn.Module):
            raise MergeError("pass spec= when merging state dicts (or pass the models themselves)")
        spec = spec_for(members[0], symmetry=symmetry)
    sds = [_state_dict(m) for m in members]
    check_state_dicts(spec, *sds, names=[f"member {i}" for i in range(len(sds))])
    start = time.perf_counter()
    if method == "cycle":
        from .cycle import cycle_consistent_perms

        init, _, _ = _reference(spec, sds, w, seed, max_iter, progress)
        perms, iterations, history = cycle_consistent_perms(spec, sds, w, init, max_iter=max_iter, progress=progress)
    else:
        run = _mergemany if method == "mergemany" else _reference
        perms, iterations, history = run(spec, sds, w, seed, max_iter, progress)
    seconds = time.perf_counter() - start
    aligned = [apply_permutation(spec, p, sd) for p, sd in zip(perms, sds)]
    record = MergeRecord(method, [{p: v.cpu() for p, v in q.items()} for q in perms], w, iterations,
                         universe_objective(spec, aligned, w), seconds, history, symmetry)
    return average_state_dicts(aligned, w), record
