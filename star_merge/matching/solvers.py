"""Linear assignment backends for weight matching: one interface, several exact solvers.

Every backend maximises ``Σ_i cost[i, col[i]]`` over permutations ``col`` and returns an optimal one
(ties aside: when several assignments reach the optimum, backends may pick different ones).

- ``scipy``: ``scipy.optimize.linear_sum_assignment`` (shortest augmenting path, always installed).
- ``lapjv``: the Jonker-Volgenant solver of the ``lap`` package (``pip install lap``; PyPI's ``lap``
  is the maintained "lapx" line, a manylinux wheel). Much faster than scipy when the problem is
  near-aligned (most rows' best column is free: JV's column reduction and augmenting row reduction
  settle those rows before any shortest path search), slower on unstructured costs.
- ``cuda``: ``torch_linear_assignment.batch_linear_assignment`` (Triton kernel, one problem per
  program; ``pip install torch-linear-assignment``) on a batch of cost matrices that live on a GPU.
  Imported lazily: the module works without it.
- ``auto``: chosen per problem from measurements (docs/performance.md): ``cuda`` for batches on a GPU
  when it is importable; on the host ``lapjv`` for problems up to ``LAPJV_ANY_UP_TO`` units and for
  larger near-aligned ones (at least ``NEAR_ALIGNED`` of the rows already take their row maximum at
  the current assignment), ``scipy`` otherwise (large unstructured problems) or when ``lap`` is missing.
"""

from __future__ import annotations

import functools
import importlib.util
import time

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..errors import UserError
from ..groups import GROUP_KINDS, PERMUTATION, best_orthogonal, is_orthogonal_kind

__all__ = ["SOLVERS", "GROUP_KINDS", "available_solvers", "check_solver", "solve", "solve_batch", "solve_batches",
           "pick_solver", "pad_problems", "is_permutation", "solve_group"]

SOLVERS = ("auto", "scipy", "lapjv", "cuda")
# The kinds of group a matching coordinate may range over (``star_merge.groups``), each solved by :func:`solve_group`.
# Share of rows whose maximum is already at the current assignment above which ``auto`` takes lapjv.
NEAR_ALIGNED = 0.5
# Up to this size lapjv beat scipy on every structure measured (Gaussian and Starlight cost matrices,
# 1 thread: n=512 4.3 vs 15.9 ms, n=1024 30 vs 141 ms); at n=2048 unstructured scipy wins (634 vs 830 ms).
LAPJV_ANY_UP_TO = 1024


@functools.cache
def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _host_threads() -> int:
    """Host threads for a batch of scipy problems: the CPUs this process may use, at most 16."""
    import os

    return max(1, min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def available_solvers() -> list[str]:
    """The concrete backends importable here (``cuda`` also needs a CUDA device at call time)."""
    out = ["scipy"]
    if _has("lap"):
        out.append("lapjv")
    if _has("torch_linear_assignment") and _has("triton"):
        out.append("cuda")
    return out


def check_solver(name: str) -> None:
    """Fail with one line naming the fix when ``name`` is unknown or its package is missing."""
    if name not in SOLVERS:
        raise UserError(f"matching solver {name!r} is not one of {', '.join(SOLVERS)}")
    if name == "lapjv" and not _has("lap"):
        raise UserError("matching solver 'lapjv' needs the lap package: pip install lap (or use --matching_solver auto)")
    if name == "cuda" and not _has("torch_linear_assignment"):
        raise UserError(
            "matching solver 'cuda' needs torch-linear-assignment: pip install torch-linear-assignment "
            "(or use --matching_solver auto)"
        )


def pick_solver(solver: str, near_aligned_share: float | None = None, on_cuda: bool = False, n: int | None = None) -> str:
    """The concrete backend ``solver`` means for one problem (or batch) of size ``n`` and the given structure."""
    if solver != "auto":
        return solver
    if on_cuda and "cuda" in available_solvers():
        return "cuda"
    if not _has("lap"):
        return "scipy"
    if n is not None and n <= LAPJV_ANY_UP_TO:
        return "lapjv"
    if near_aligned_share is not None and near_aligned_share >= NEAR_ALIGNED:
        return "lapjv"
    return "scipy"


def solve(cost: np.ndarray, solver: str = "scipy") -> np.ndarray:
    """Column assigned to each row maximising the summed cost; ``cost`` is a square float64 array."""
    if solver == "scipy" or solver == "auto":
        return linear_sum_assignment(cost, maximize=True)[1]
    if solver == "lapjv":
        import lap

        n, m = cost.shape
        if n != m:
            raise ValueError(f"lapjv solves square problems here, got {n}x{m}")
        # lap minimises, and its JV compares with absolute tolerances: on costs with a large offset it
        # returns suboptimal assignments (measured: tests/test_solvers.py "big"). Shifting each row by
        # its maximum and scaling to unit range changes no assignment's rank (every assignment takes
        # one entry per row), so the minimiser of this is the maximiser of ``cost``.
        c = cost.max(axis=1, keepdims=True) - cost
        scale = c.max()
        if scale > 0:
            c /= scale
        _, x, _ = lap.lapjv(np.ascontiguousarray(c, dtype=np.float64), extend_cost=False)
        return np.asarray(x, dtype=np.int64)
    if solver == "cuda":  # one problem: on the GPU when there is one (else torch-linear-assignment's scipy)
        t = torch.as_tensor(cost)[None]
        return solve_batch(t.cuda() if torch.cuda.is_available() else t, "cuda")[0].cpu().numpy()
    raise UserError(f"matching solver {solver!r} is not one of {', '.join(SOLVERS)}")


def solve_batch(costs: torch.Tensor, solver: str = "scipy") -> torch.Tensor:
    """Solve ``costs[b]`` ([B, n, n], maximise) for every b; LongTensor [B, n] on ``costs``' device.

    ``cuda`` solves the whole batch in one Triton launch when ``costs`` is on a GPU (on the host
    ``torch_linear_assignment`` falls back to scipy per problem); the host backends copy the cost
    matrices (not the weights) to the host and solve them one by one (``scipy``: on up to 16 host
    threads at once, since it releases the GIL).
    """
    if costs.ndim != 3:
        raise ValueError(f"solve_batch needs a [B, n, n] tensor, got shape {tuple(costs.shape)}")
    if solver == "cuda":
        from torch_linear_assignment import batch_linear_assignment

        # It minimises; float64 stays float64 so the result matches scipy's on the same numbers.
        return batch_linear_assignment(-costs).to(torch.long)
    host = list(costs.detach().to("cpu", torch.float64).numpy())
    cols = _scipy_on_threads(host) if solver == "scipy" else [solve(c, solver) for c in host]
    return _stacked(cols, costs)


def _scipy_on_threads(host: list[np.ndarray]) -> list[np.ndarray]:
    """scipy's solution of every problem; its solver releases the GIL, so they run on host threads side by
    side (lap's does not, so lapjv stays one problem at a time)."""
    if len(host) > 1 and _host_threads() > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(len(host), _host_threads())) as pool:
            return list(pool.map(lambda c: solve(c, "scipy"), host))
    return [solve(c, "scipy") for c in host]


def _stacked(cols: list[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    """Host solutions of the problems of ``like`` ([B, n, n]) as a LongTensor [B, n] on its device."""
    out = np.stack(cols) if cols else np.zeros((0, like.shape[1]), np.int64)
    return torch.as_tensor(out, dtype=torch.long).to(like.device)


def pad_problems(batches: list[torch.Tensor]) -> torch.Tensor:
    """Problems of several sizes as one batch [ΣB_i, N, N] (N the largest n_i) with the same optimal assignments.

    Each float64 problem is shifted by its maximum (every assignment's value moves by the same n·max, so
    the optimum does not change) and embedded top-left; the padding rows and columns meet at 0 and cross
    the real block at ``-(n·range + 1)``. A real row assigned to a padding column forces a padding row onto
    a real column: two such entries cost more than any real assignment can gain (at most n·range), so every
    optimum of the padded problem takes the real rows to the real columns, optimally.
    """
    size = max(b.shape[-1] for b in batches)
    total = sum(b.shape[0] for b in batches)
    out = torch.zeros((total, size, size), dtype=torch.float64, device=batches[0].device)
    at = 0
    for b in batches:
        k, n = b.shape[0], b.shape[-1]
        if n < size:
            c = b.to(torch.float64)
            top = c.amax(dim=(1, 2), keepdim=True)
            low = -(n * (top - c.amin(dim=(1, 2), keepdim=True)) + 1)
            out[at:at + k, :n, n:] = low
            out[at:at + k, n:, :n] = low
            out[at:at + k, :n, :n] = c - top
        else:
            out[at:at + k] = b
        at += k
    return out


def solve_batches(batches: list[torch.Tensor], solver: str = "scipy") -> list[torch.Tensor]:
    """:func:`solve_batch` of several batches ([B_i, n_i, n_i], sizes may differ) in one call.

    ``cuda``: one launch for all (padded to the largest size by :func:`pad_problems`; a
    launch costs about its largest problem, whatever the batch, so one padded launch beats one per size). ``scipy``: all
    problems on the host threads together. Others: one by one.
    """
    if not batches:
        return []
    counts = [b.shape[0] for b in batches]
    if solver == "cuda":
        same = len({b.shape[-1] for b in batches}) == 1
        cols = solve_batch(torch.cat(list(batches)) if same else pad_problems(batches), "cuda")
        return [c[:, :b.shape[-1]] for c, b in zip(torch.split(cols, counts), batches)]
    if solver == "scipy":
        found = _scipy_on_threads([c for b in batches for c in b.detach().to("cpu", torch.float64).numpy()])
        starts = np.cumsum([0] + counts)
        return [_stacked(found[a:a + k], b) for a, k, b in zip(starts, counts, batches)]
    return [solve_batch(b, solver) for b in batches]


def is_permutation(cols: torch.Tensor) -> torch.Tensor | bool:
    """Whether every row of ``cols`` ([..., n] column indices in 0..n-1) holds n distinct columns."""
    hits = torch.zeros(cols.shape, dtype=torch.bool, device=cols.device).scatter_(-1, cols, True)
    out = hits.all(dim=-1)
    return bool(out) if out.ndim == 0 else out


def solve_group(kind: str, costs: dict, currents: dict, solver: str = "auto", tol: float = 1e-12,
                on_device: bool = False, stats=None, started: float | None = None) -> list[tuple[str, int, torch.Tensor]]:
    """One round of the coordinate descent's solves for the coordinates ``costs`` of one group kind.

    ``costs[p]``: [m, n, n] cost matrices (maximise ⟨C, map⟩) of m models for coordinate p, ``currents[p]``
    their current maps ([m, n] for permutations). Returns (p, j, new map) for every problem j whose best
    map beats its current one by more than ``tol`` (relative); the others keep theirs. ``stats`` (a
    ``DescentStats``) receives the problems solved / skipped / per backend and the seconds of the phases
    (``started``: when building the cost matrices began). The descent reaches solving only through here:
    a new kind of group adds its branch. Permutations: linear assignment; orthogonal maps ([m, n, n]): orthogonal
    Procrustes, the polar factor of the same cost matrix (one SVD each, batched; with Q·1 = 1 in the basis of the
    mean-free subspace), see ``groups.best_orthogonal``.
    """
    if kind == PERMUTATION:
        return _assign_round(costs, currents, solver, tol, on_device, stats, started)
    if is_orthogonal_kind(kind):
        return _procrustes_round(kind, costs, currents, tol, stats, started)
    raise UserError(f"no solver for group kind {kind!r}; known kinds: {', '.join(GROUP_KINDS)}")


def _shortcuts(costs, currents, stats, started):
    """Per problem: whether it needs solving (not every row at its maximum), whether its rows' maxima form a
    permutation (then optimal: they reach Σ_i max_j C_ij, no solver needed), its share of rows at their
    maximum; one host sync for the round."""
    row_maxs, flags = {}, []
    for p, cost in costs.items():
        row_max = cost.argmax(dim=2)
        row_maxs[p] = row_max
        flags.append(torch.stack([(row_max == currents[p]).float().mean(dim=1), is_permutation(row_max).float()], dim=1))
    flags = torch.cat(flags).tolist()
    now = time.perf_counter()
    stats.seconds["costs"] = stats.seconds.get("costs", 0.0) + now - (now if started is None else started)
    todo, hard, share, at = {}, {}, {}, 0
    for p, cost in costs.items():
        f = flags[at:at + cost.shape[0]]
        at += cost.shape[0]
        todo[p] = [j for j, (s_, _) in enumerate(f) if s_ < 1.0]
        stats.skipped += cost.shape[0] - len(todo[p])
        direct = sum(1 for j in todo[p] if f[j][1] == 1.0)
        if direct:
            stats.solvers["argmax"] = stats.solvers.get("argmax", 0) + direct
        hard[p] = [t for t, j in enumerate(todo[p]) if f[j][1] != 1.0]  # positions in todo[p]
        share[p] = [f[todo[p][t]][0] for t in hard[p]]
    return row_maxs, {p: t for p, t in todo.items() if t}, hard, share, now


def _solve_hard(subs, hard, share, solver, on_device, stats) -> dict:
    """The assignment problems the shortcuts left, every size together (one launch on a GPU)."""
    need = [p for p in subs if hard[p]]
    if not need:
        return {}
    device = subs[need[0]].device
    pos = {p: torch.as_tensor(hard[p], device=device) for p in need}
    batches = [subs[p][pos[p]] for p in need]
    if on_device or solver == "scipy":  # one call (cuda: one launch; scipy: the problems on host threads)
        backend = "cuda" if on_device else "scipy"
        found = solve_batches(batches, backend)
        for p in need:
            stats.solvers[backend] = stats.solvers.get(backend, 0) + len(hard[p])
    else:
        found = []
        for p, batch in zip(need, batches):
            picked = [pick_solver(solver, sh, n=batch.shape[-1]) for sh in share[p]]
            host = batch.cpu().numpy()
            found.append(torch.as_tensor(np.stack([solve(c, s_) for c, s_ in zip(host, picked)]), device=device))
            for s_ in picked:
                stats.solvers[s_] = stats.solvers.get(s_, 0) + 1
    stats.solved += sum(len(hard[p]) for p in need)
    return {p: (pos[p], sol) for p, sol in zip(need, found)}


def _assign_round(costs, currents, solver, tol, on_device, stats, started):
    """:func:`solve_group` for permutations: shortcuts, exact assignment, acceptance (one sync)."""
    row_maxs, todo, hard, share, start = _shortcuts(costs, currents, stats, started)
    if not todo:
        return []
    subs = {p: costs[p][t].double() for p, t in todo.items()}
    cols = {p: row_maxs[p][t].clone() for p, t in todo.items()}
    for p, (pos, sol) in _solve_hard(subs, hard, share, solver, on_device, stats).items():
        cols[p][pos] = sol
    gains = []
    for p, t in todo.items():
        cur = currents[p][t]
        old_val = subs[p].gather(2, cur[:, :, None]).sum(dim=(1, 2))
        new_val = subs[p].gather(2, cols[p][:, :, None]).sum(dim=(1, 2))
        gains.append(new_val > old_val + tol * old_val.abs().clamp_min(1.0))
    better = torch.cat(gains).tolist()  # one sync
    changed, at = [], 0
    for p, t in todo.items():
        changed += [(p, j, cols[p][r]) for r, j in enumerate(t) if better[at + r]]
        at += len(t)
    stats.seconds["solve"] = stats.seconds.get("solve", 0.0) + time.perf_counter() - start
    return changed


def _procrustes_round(kind, costs, currents, tol, stats, started):
    """:func:`solve_group` for orthogonal maps: the best map of each problem by SVD, taken when it beats the
    current one's ⟨C, Q⟩ by more than ``tol`` (relative); one sync for the round."""
    start = time.perf_counter()
    stats.seconds["costs"] = stats.seconds.get("costs", 0.0) + start - (start if started is None else started)
    found, gains = {}, []
    for p, cost in costs.items():
        c = cost.double()
        best = best_orthogonal(kind, c)
        cur = currents[p].to(c.device, torch.float64)
        old_val, new_val = (c * cur).sum(dim=(1, 2)), (c * best).sum(dim=(1, 2))
        found[p] = best.to(currents[p].dtype)
        gains.append(new_val > old_val + tol * old_val.abs().clamp_min(1.0))
    better = torch.cat(gains).tolist()
    changed, at = [], 0
    for p, cost in costs.items():
        changed += [(p, j, found[p][j]) for j in range(cost.shape[0]) if better[at + j]]
        at += cost.shape[0]
    stats.solved += at
    stats.solvers["procrustes"] = stats.solvers.get("procrustes", 0) + at
    stats.seconds["solve"] = stats.seconds.get("solve", 0.0) + time.perf_counter() - start
    return changed
