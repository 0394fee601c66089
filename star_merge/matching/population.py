"""Align a population of flat anchors to one flat star where they live, batched across anchors.

Starlight re-aligns every anchor to the star θ each epoch. :func:`align_rows` runs, for every anchor,
exactly the coordinate descent of :func:`weight_matching` (same seeded visiting order per anchor, same
skipped problems, same acceptance test; no restarts), but

- on θ's device: θ and the anchor rows are never copied to the host (anchors held on the host are
  moved to θ's device a chunk at a time); only the n×n cost matrices go to a host solver;
- batched: anchors whose next visit is the same permutation are grouped (each round takes the
  permutation most anchors wait for; each anchor still follows its own seeded order), and the
  cost matrices of the whole group are built with one batched product per tensor
  (``[n, r] @ [g, r, n]``) and handed to the solver together (one launch with ``solver="cuda"``).

Results equal ``weight_matching(spec, views(θ), views(row), seed=seeds[i], restarts=0)``'s
permutations (up to ties, and float rounding of the batched products on near-ties).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..spec import AxisPerm, PermutationSpec, SpecError
from .solvers import available_solvers, check_solver, pick_solver, solve, solve_batch
from .weight_matching import _neighbours, _to_blocks, is_permutation, weight_matching

__all__ = ["PopulationAlignment", "align_rows", "align_slice", "BackgroundAlignment"]


@dataclass
class PopulationAlignment:
    """``perms[j]``: the permutation aligning row ``indices[j]`` to θ (CPU LongTensors), ``sweeps[j]``
    its sweeps; ``solved``: assignment problems handed to a solver, ``skipped``: cost matrices whose
    current assignment already took every row's maximum (batched path); ``solvers``: problems per
    backend, ``"argmax"`` counting those whose rows' maxima formed a permutation (optimal, no solver);
    ``groups``: batched solves (rounds) made; ``seconds``: wall time of the batched path's phases, ``"costs"`` (building the cost matrices and
    their row maxima) and ``"solve"`` (assignment and acceptance), each ending at a host sync."""

    perms: list[dict[str, torch.Tensor]]
    sweeps: list[int]
    solved: int = 0
    skipped: int = 0
    solvers: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    groups: int = 0


def _expand_batched(perm: torch.Tensor, ap: AxisPerm) -> torch.Tensor:
    """``expand_index`` for a batch of permutations [g, n] -> element indices [g, repeat*n*block]."""
    g, n = perm.shape
    idx = perm
    if ap.block > 1:
        idx = (perm[:, :, None] * ap.block + torch.arange(ap.block, device=perm.device)).reshape(g, -1)
    if ap.repeat > 1:
        stride = n * ap.block
        idx = (torch.arange(ap.repeat, device=perm.device)[None, :, None] * stride + idx[:, None, :]).reshape(g, -1)
    return idx


def _index_batched(w: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``w[b].index_select(dim - 1, idx[b])`` for every b of a batched tensor."""
    w = torch.movedim(w, dim, 1)
    w = w[torch.arange(w.shape[0], device=w.device)[:, None], idx]
    return torch.movedim(w, 1, dim)


def _blocks_batched(w: torch.Tensor, dim: int, ap: AxisPerm, n: int) -> torch.Tensor:
    """``_to_blocks`` of every batch member: [g, *shape] -> [g, n, everything else]."""
    g = w.shape[0]
    w = torch.movedim(w, dim, 1)
    rest = w.shape[2:]
    w = w.reshape(g, ap.repeat, n, ap.block, *rest)
    return torch.movedim(w, 2, 1).reshape(g, n, -1)


@torch.no_grad()
def align_rows(
    spec: PermutationSpec,
    layout,
    theta: torch.Tensor,
    rows: torch.Tensor,
    indices: Sequence[int],
    seeds: Sequence[int],
    max_iter: int = 100,
    solver: str = "auto",
    tol: float = 1e-12,
    chunk_elements: int | None = None,
    batched: bool | None = None,
) -> PopulationAlignment:
    """Weight-match ``rows[i]`` (i in ``indices``, flat in ``layout``) to the flat star ``theta``.

    ``spec`` covers the tensors of ``layout`` that are matched (e.g. the parameters); ``seeds[j]`` seeds
    anchor ``indices[j]``'s visiting order. Every anchor starts from the identity (the rows are kept in
    the star's previous frame, a warm start). Work runs on ``theta``'s device, ``chunk_elements``
    anchor numbers at a time (default 2**29 on a GPU, 2**26 elsewhere: the chunk is one copy).
    ``batched`` (default: on a GPU only) builds the cost matrices of all anchors visiting a permutation
    in one product; unbatched runs :func:`weight_matching` per anchor, whose term cache and rank-|S|
    updates make the later sweeps cheap (faster on a CPU, where a batch saves no launches).
    """
    check_solver(solver)
    if len(seeds) != len(indices):
        raise ValueError("align_rows needs one seed per index")
    device = theta.device
    flat = theta.detach().float()
    views = dict(zip(layout.names, zip(layout.offsets, layout.numels, layout.shapes)))
    missing = [k for k in spec.axes_to_perm if k not in views]
    if missing:
        raise SpecError(f"tensor {missing[0]!r} of the spec is not in the flat layout")
    names = [k for k in spec.permuted_tensors]
    A = {k: flat[views[k][0]:views[k][0] + views[k][1]].view(views[k][2]) for k in names}
    perm_to_axes = spec.perm_to_axes
    a_blocks = {(k, ax): _to_blocks(A[k], ax, ap, spec.perm_sizes[p]) for p, axes in perm_to_axes.items()
                for k, ax, ap in axes}
    neighbours = _neighbours(spec, perm_to_axes)
    out = PopulationAlignment(perms=[], sweeps=[])
    if batched is None:
        batched = device.type == "cuda"
    if not batched:
        for i, seed in zip(indices, seeds):
            row = rows[i].to(device, torch.float32, non_blocking=True)
            b = {k: row[views[k][0]:views[k][0] + views[k][1]].view(views[k][2]) for k in names}
            counts: dict = {}
            res = weight_matching(spec, A, b, seed=seed, max_iter=max_iter, tol=tol, validate=False, solver=solver,
                                  restarts=0, counts=counts, track=False)
            out.perms.append(res.perm)
            out.sweeps.append(res.iterations)
            out.solved += sum(c for s_, c in counts.items() if s_ != "argmax")
            for s_, c in counts.items():
                out.solvers[s_] = out.solvers.get(s_, 0) + c
        return out
    if chunk_elements is None:
        chunk_elements = 2**29 if device.type == "cuda" else 2**26
    per_chunk = max(1, int(chunk_elements) // max(1, layout.total))
    for start in range(0, len(indices), per_chunk):
        idx = list(indices[start:start + per_chunk])
        chunk = rows[torch.as_tensor(idx, device=rows.device)].to(device, torch.float32, non_blocking=True)
        B = {k: chunk[:, views[k][0]:views[k][0] + views[k][1]].view(len(idx), *views[k][2]) for k in names}
        perms, sweeps = _descend_batched(spec, perm_to_axes, neighbours, a_blocks, B,
                                         list(seeds[start:start + per_chunk]), max_iter, tol, solver, out)
        out.perms += [{p: v[j].cpu() for p, v in perms.items()} for j in range(len(idx))]
        out.sweeps += sweeps
        del chunk, B
    return out


def align_slice(spec, layout, theta, rows, rank: int, world: int, seed: int, max_iter: int = 100,
                solver: str = "auto") -> list[tuple[int, dict[str, torch.Tensor]]]:
    """One process's share of a population alignment, [(row, permutation)]: rows rank, rank+world, ...;
    row i seeded seed+i (on θ's device: no host copy of θ or of the rows)."""
    indices = list(range(rank, rows.shape[0], world))
    found = align_rows(spec, layout, theta, rows, indices, [seed + i for i in indices], max_iter, solver)
    return list(zip(indices, found.perms))


def _descend_batched(spec, perm_to_axes, neighbours, a_blocks, B, seeds, max_iter, tol, solver, out):
    """Every anchor's own descent (its seeded order, skips and acceptance, as weight_matching's), scheduled
    so that anchors whose next visit is the same permutation are solved together: each round takes the
    permutation most anchors wait for (anchors are independent, so only each one's own order matters)."""
    g = len(seeds)
    device = next(iter(B.values())).device
    perm_names = sorted(spec.perm_sizes)
    perms = {p: torch.arange(n, device=device).repeat(g, 1) for p, n in spec.perm_sizes.items()}
    version = [{p: 0 for p in perm_names} for _ in range(g)]
    solved_at: list[dict] = [{} for _ in range(g)]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    sweeps = [0] * g
    queue: list[list[str]] = [[] for _ in range(g)]  # the rest of each anchor's current sweep
    improved = [False] * g
    active = set(range(g))
    on_cuda = device.type == "cuda" and solver in ("auto", "cuda") and "cuda" in available_solvers()
    while active:
        waiting: dict[str, list[int]] = defaultdict(list)
        for b in sorted(active):
            while True:  # skip what needs no solve; start the next sweep when this one is done
                if not queue[b]:
                    if sweeps[b] and (not improved[b] or sweeps[b] >= max_iter):
                        active.discard(b)
                        break
                    sweeps[b] += 1
                    improved[b] = False
                    queue[b] = [perm_names[i] for i in torch.randperm(len(perm_names), generator=gens[b]).tolist()]
                p = queue[b][0]
                state = tuple(version[b][q] for q in neighbours[p])
                if solved_at[b].get(p) != state:
                    waiting[p].append(b)
                    break
                queue[b].pop(0)
        if not waiting:
            break
        p = max(perm_names, key=lambda q: (len(waiting.get(q, ())), -perm_names.index(q)))
        members = waiting[p]
        for b in members:
            queue[b].pop(0)
            solved_at[b][p] = tuple(version[b][q] for q in neighbours[p])
        out.groups += 1
        for b in _solve_group(spec, perm_to_axes, a_blocks, B, perms, p, members, tol, solver, on_cuda, out):
            version[b][p] += 1
            improved[b] = True
    return perms, sweeps


def _solve_group(spec, perm_to_axes, a_blocks, B, perms, p, members, tol, solver, on_cuda, out) -> list[int]:
    """Solve permutation ``p`` for the anchors ``members`` at once; returns the anchors whose p changed."""
    n = spec.perm_sizes[p]
    device = perms[p].device
    start = time.perf_counter()
    sel = torch.as_tensor(members, device=device)
    cost = torch.zeros((len(members), n, n), device=device)
    for k, ax, ap in perm_to_axes[p]:
        w = B[k].index_select(0, sel)
        for i, a in enumerate(spec.axes_to_perm[k]):
            if a is not None and i != ax:
                w = _index_batched(w, i + 1, _expand_batched(perms[a.perm].index_select(0, sel), a))
        cost += torch.matmul(a_blocks[(k, ax)], _blocks_batched(w, ax + 1, ap, n).transpose(1, 2))
    current = perms[p].index_select(0, sel)
    row_max = cost.argmax(dim=2)
    hit = row_max == current
    # per anchor: share of rows at their maximum, and whether the maxima form a permutation (one sync)
    flags = torch.stack([hit.float().mean(dim=1), is_permutation(row_max).float()], dim=1).tolist()
    now = time.perf_counter()
    out.seconds["costs"] = out.seconds.get("costs", 0.0) + now - start
    start = now
    todo = [j for j, (s, _) in enumerate(flags) if s < 1.0]  # all rows at their maximum: optimal, skip
    out.skipped += len(members) - len(todo)
    if not todo:
        return []
    # rows' maxima in distinct columns: optimal (it reaches Σ_i max_j C_ij), no solver needed
    direct = [j for j in todo if flags[j][1] == 1.0]
    hard = [j for j in todo if flags[j][1] != 1.0]
    sub = cost[todo].double()
    cur = current[todo]
    cols = row_max[todo].clone()
    if direct:
        out.solvers["argmax"] = out.solvers.get("argmax", 0) + len(direct)
    if hard:
        pos = torch.as_tensor([todo.index(j) for j in hard], device=device)
        if on_cuda:
            cols[pos] = solve_batch(sub[pos], "cuda")
            out.solvers["cuda"] = out.solvers.get("cuda", 0) + len(hard)
        elif solver == "scipy":  # one call: the batch's problems on host threads side by side
            cols[pos] = solve_batch(sub[pos], "scipy")
            out.solvers["scipy"] = out.solvers.get("scipy", 0) + len(hard)
        else:
            host = sub[pos].cpu().numpy()
            picked = [pick_solver(solver, flags[j][0], n=n) for j in hard]
            cols[pos] = torch.as_tensor(np.stack([solve(c, s) for c, s in zip(host, picked)]), device=device)
            for s in picked:
                out.solvers[s] = out.solvers.get(s, 0) + 1
        out.solved += len(hard)
    old_val = sub.gather(2, cur[:, :, None]).sum(dim=(1, 2))
    new_val = sub.gather(2, cols[:, :, None]).sum(dim=(1, 2))
    better = (new_val > old_val + tol * old_val.abs().clamp_min(1.0)).tolist()
    changed = []
    for t, (j, ok) in enumerate(zip(todo, better)):
        if ok:
            b = members[j]
            perms[p][b] = cols[t]
            changed.append(b)
    out.seconds["solve"] = out.seconds.get("solve", 0.0) + time.perf_counter() - start
    return changed


class BackgroundAlignment:
    """``fn(snapshot of theta)`` in a worker thread (Starlight's ``align_overlap`` schedule).

    θ is copied when the work starts, so training may update it meanwhile; the rows ``fn`` reads must
    not change until :meth:`result` returns (the trainer permutes rows only when it applies a result).
    On a GPU the work runs on its own CUDA stream.
    """

    def __init__(self, fn, theta: torch.Tensor):
        import threading

        self._theta = theta.detach().clone()
        # the worker's stream must see the snapshot (and the rows) as the training stream left them
        self._after = torch.cuda.current_stream(theta.device) if theta.is_cuda else None
        self._out = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn):
        try:
            if self._theta.is_cuda:
                stream = torch.cuda.Stream(device=self._theta.device)
                stream.wait_stream(self._after)
                with torch.cuda.stream(stream):
                    self._out = fn(self._theta)
                    torch.cuda.current_stream().synchronize()
            else:
                self._out = fn(self._theta)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            self._error = e

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._out
