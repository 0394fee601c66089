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

Results equal ``weight_matching(spec, views(θ), views(row), seed=seeds[i], restarts=0, order=order)``'s
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
from .solvers import available_solvers, check_solver, pick_solver, solve, solve_batches
from .weight_matching import (
    _neighbours, _to_blocks, check_order, colour_classes, is_permutation, sweep_order, weight_matching,
)

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


def _expand_batched(perm: torch.Tensor, ap: AxisPerm, size: int | None = None) -> torch.Tensor:
    """``expand_index`` for a batch of permutations [g, n] -> element indices [g, repeat*n*block]; with
    ``size``, ``perm`` holds some units [g, s] of a permutation of ``size`` units (their element positions)."""
    g, n = perm.shape
    idx = perm
    if ap.block > 1:
        idx = (perm[:, :, None] * ap.block + torch.arange(ap.block, device=perm.device)).reshape(g, -1)
    if ap.repeat > 1:
        stride = (n if size is None else size) * ap.block
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
    order: str = "random",
    cache_elements: int | None = None,
) -> PopulationAlignment:
    """Weight-match ``rows[i]`` (i in ``indices``, flat in ``layout``) to the flat star ``theta``.

    ``spec`` covers the tensors of ``layout`` that are matched (e.g. the parameters); ``seeds[j]`` seeds
    anchor ``indices[j]``'s visiting order. Every anchor starts from the identity (the rows are kept in
    the star's previous frame, a warm start). Work runs on ``theta``'s device, ``chunk_elements``
    anchor numbers at a time (the chunk is one copy; default on a GPU: a quarter of its free memory, at
    least 2**29; elsewhere 2**26). Each chunk is its own schedule of rounds, so fewer chunks, fewer rounds.
    ``batched`` (default: on a GPU only) builds the cost matrices of all anchors visiting a permutation
    in one product; unbatched runs :func:`weight_matching` per anchor, whose term cache and rank-|S|
    updates make the later sweeps cheap (faster on a CPU, where a batch saves no launches).
    ``order``: the descent's visiting order, as :func:`weight_matching`'s (``colored``: one round per
    colour class for all anchors, ≈ 3 rounds per sweep on a ResNet instead of one per permutation and
    visiting order); ``auto``: ``colored`` when batched, ``random`` otherwise. ``cache_elements``: numbers
    the batched path may keep in cached cost-matrix terms per chunk (default: ``chunk_elements``; 0: none),
    updated by rank-|S| products when few units moved, as weight_matching's cache (same results up to float
    rounding).
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
    if order == "auto":
        order = "colored" if batched else "random"
    check_order(order)
    if not batched:
        for i, seed in zip(indices, seeds):
            row = rows[i].to(device, torch.float32, non_blocking=True)
            b = {k: row[views[k][0]:views[k][0] + views[k][1]].view(views[k][2]) for k in names}
            counts: dict = {}
            res = weight_matching(spec, A, b, seed=seed, max_iter=max_iter, tol=tol, validate=False, solver=solver,
                                  restarts=0, counts=counts, track=False, order=order)
            out.perms.append(res.perm)
            out.sweeps.append(res.iterations)
            out.solved += sum(c for s_, c in counts.items() if s_ != "argmax")
            for s_, c in counts.items():
                out.solvers[s_] = out.solvers.get(s_, 0) + c
        return out
    if chunk_elements is None:
        chunk_elements = 2**26
        if device.type == "cuda":  # a quarter of the free device memory (float32), at least 2 GiB
            chunk_elements = max(2**29, torch.cuda.mem_get_info(device)[0] // 16)
    per_chunk = max(1, int(chunk_elements) // max(1, layout.total))
    for start in range(0, len(indices), per_chunk):
        idx = list(indices[start:start + per_chunk])
        chunk = rows[torch.as_tensor(idx, device=rows.device)].to(device, torch.float32, non_blocking=True)
        B = {k: chunk[:, views[k][0]:views[k][0] + views[k][1]].view(len(idx), *views[k][2]) for k in names}
        perms, sweeps = _descend_batched(spec, perm_to_axes, neighbours, A, a_blocks, B,
                                         list(seeds[start:start + per_chunk]), max_iter, tol, solver, out, order,
                                         chunk_elements if cache_elements is None else cache_elements)
        out.perms += [{p: v[j].cpu() for p, v in perms.items()} for j in range(len(idx))]
        out.sweeps += sweeps
        del chunk, B
    return out


def align_slice(spec, layout, theta, rows, rank: int, world: int, seed: int, max_iter: int = 100,
                solver: str = "auto", order: str = "auto") -> list[tuple[int, dict[str, torch.Tensor]]]:
    """One process's share of a population alignment, [(row, permutation)]: rows rank, rank+world, ...;
    row i seeded seed+i (on θ's device: no host copy of θ or of the rows)."""
    indices = list(range(rank, rows.shape[0], world))
    found = align_rows(spec, layout, theta, rows, indices, [seed + i for i in indices], max_iter, solver, order=order)
    return list(zip(indices, found.perms))


# A (tensor, axis) term is cached when building it costs at least this many flops per cached number
# (2·n²·r flops for n² numbers: r = elements per unit); smaller ones (BatchNorm vectors) are rebuilt.
CACHE_MIN_ROW = 16


class _TermCache:
    """Every anchor's term ``A_blocks @ π(B)_blocks^T`` per (tensor, axis), [G, n, n], as weight_matching
    caches one model's: valid while the permutations on the tensor's other axes are those it was built
    with; when exactly one of them changed, moving |S| <= n/4 units, updated by a rank-|S| product
    (``term += A[S] @ (B_new[S] - B_old[S])^T``, 2·n²·|S| flops instead of 2·n²·size), otherwise rebuilt.
    A term is cached while the cache holds at most ``budget`` numbers (the rest are rebuilt when used)."""

    def __init__(self, spec, A, a_blocks, B, version, budget: int):
        self.spec, self.A, self.a_blocks, self.B, self.version = spec, A, a_blocks, B, version
        self.g = next(iter(B.values())).shape[0]
        self.budget = budget
        # (k, ax) -> [term [G, n, n], keys per anchor (None: not built), snaps {axis i: [G, n_i]}, other axes]
        self.entries: dict = {}

    def _permuted(self, k, perms, sel, keep):
        """The anchors ``sel``'s tensor k with every permuted axis but those in ``keep`` permuted as now."""
        w = self.B[k].index_select(0, sel)
        for i, a in enumerate(self.spec.axes_to_perm[k]):
            if a is not None and i not in keep:
                w = _index_batched(w, i + 1, _expand_batched(perms[a.perm].index_select(0, sel), a))
        return w

    def _build(self, k, ax, ap, n, perms, sel):
        w = self._permuted(k, perms, sel, keep=(ax,))
        return torch.matmul(self.a_blocks[(k, ax)], _blocks_batched(w, ax + 1, ap, n).transpose(1, 2))

    def _rank_update(self, k, ax, ap, n, i, perms, sel, old_p, new_p, mask, s):
        """term[sel] += A[S] @ (π_new(B)[S] - π_old(B)[S])^T, S the units of axis i that moved (padded to s)."""
        a = self.spec.axes_to_perm[k][i]
        units = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :s]  # moved units first
        pos = _expand_batched(units, a, old_p.shape[1])  # padding units did not move: their difference is 0
        w = self._permuted(k, perms, sel, keep=(ax, i))
        new_e = _expand_batched(new_p, a).gather(1, pos)
        old_e = _expand_batched(old_p, a).gather(1, pos)
        diff = _index_batched(w, i + 1, new_e) - _index_batched(w, i + 1, old_e)
        a_sel = _index_batched(self.A[k].expand(len(sel), *self.A[k].shape), i + 1, pos)
        return torch.matmul(_blocks_batched(a_sel, ax + 1, ap, n), _blocks_batched(diff, ax + 1, ap, n).transpose(1, 2))

    def term(self, k, ax, ap, n, perms, members, sel):
        """The term of (k, ax) for the anchors ``members`` ([m, n, n]) with the current permutations."""
        spec = self.spec
        entry = self.entries.get((k, ax))
        if entry is None:
            if self.A[k].numel() // n < CACHE_MIN_ROW or self.g * n * n > self.budget:
                return self._build(k, ax, ap, n, perms, sel)
            self.budget -= self.g * n * n
            others = [i for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax]
            entry = [torch.zeros((self.g, n, n), device=sel.device, dtype=self.A[k].dtype), [None] * self.g,
                     {i: torch.zeros((self.g, spec.perm_sizes[spec.axes_to_perm[k][i].perm]), dtype=torch.long,
                                     device=sel.device) for i in others}, others]
            self.entries[(k, ax)] = entry
        term, keys, snaps, others = entry
        axes_k = spec.axes_to_perm[k]
        now = {b: tuple(self.version[b][axes_k[i].perm] for i in others) for b in members}
        stale = [b for b in members if keys[b] != now[b]]
        if not stale:
            return term.index_select(0, sel)
        rebuild, by_axis = [], {}
        for b in stale:
            changed = [] if keys[b] is None else [i for i, o, c in zip(others, keys[b], now[b]) if o != c]
            if len(changed) == 1:
                by_axis.setdefault(changed[0], []).append(b)
            else:
                rebuild.append(b)
        for i, bs in by_axis.items():
            q = axes_k[i].perm
            idx = torch.as_tensor(bs, device=sel.device)
            old_p, new_p = snaps[i].index_select(0, idx), perms[q].index_select(0, idx)
            mask = old_p != new_p
            counts = mask.sum(dim=1).tolist()  # one sync per (tensor, axis) and round
            size = new_p.shape[1]
            upd = [j for j, c in enumerate(counts) if 0 < c <= size // 4]
            rebuild += [b for b, c in zip(bs, counts) if c > size // 4]
            if upd:
                u = torch.as_tensor(upd, device=sel.device)
                s = max(counts[j] for j in upd)
                rows = idx.index_select(0, u)
                term.index_add_(0, rows, self._rank_update(k, ax, ap, n, i, perms, rows, old_p.index_select(0, u),
                                                           new_p.index_select(0, u), mask.index_select(0, u), s))
        if rebuild:
            idx = torch.as_tensor(sorted(rebuild), device=sel.device)
            term.index_copy_(0, idx, self._build(k, ax, ap, n, perms, idx))
        idx = torch.as_tensor(stale, device=sel.device)
        for i in others:
            snaps[i].index_copy_(0, idx, perms[axes_k[i].perm].index_select(0, idx))
        for b in stale:
            keys[b] = now[b]
        return term.index_select(0, sel)


def _descend_batched(spec, perm_to_axes, neighbours, A, a_blocks, B, seeds, max_iter, tol, solver, out,
                     order="random", cache_elements=0):
    """Every anchor's own descent (its visiting order, skips and acceptance, as weight_matching's), scheduled
    so that anchors whose next visit is the same class of permutations are solved together: each round
    takes the class most anchors wait for (anchors are independent, so only each one's own order matters).
    ``random``: each class is one permutation, each anchor's order its own seeded draw; ``colored``: the
    colour classes in one fixed order, so every anchor still descending takes part in every round."""
    g = len(seeds)
    device = next(iter(B.values())).device
    perm_names = sorted(spec.perm_sizes)
    classes = colour_classes(neighbours) if order == "colored" else None
    perms = {p: torch.arange(n, device=device).repeat(g, 1) for p, n in spec.perm_sizes.items()}
    version = [{p: 0 for p in perm_names} for _ in range(g)]
    solved_at: list[dict] = [{} for _ in range(g)]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    sweeps = [0] * g
    queue: list[list[list[str]]] = [[] for _ in range(g)]  # the rest of each anchor's current sweep
    improved = [False] * g
    active = set(range(g))
    on_cuda = device.type == "cuda" and solver in ("auto", "cuda") and "cuda" in available_solvers()
    cache = _TermCache(spec, A, a_blocks, B, version, cache_elements)

    def refill(b) -> bool:
        """Start anchor b's next sweep; False (and b leaves) when its last sweep improved nothing."""
        if sweeps[b] and (not improved[b] or sweeps[b] >= max_iter):
            active.discard(b)
            return False
        sweeps[b] += 1
        improved[b] = False
        queue[b] = sweep_order(order, perm_names, classes, gens[b])
        return True

    def due(b, cls) -> list[str]:  # the permutations of cls whose cost matrix changed since b last solved them
        return [p for p in cls if solved_at[b].get(p) != tuple(version[b][q] for q in neighbours[p])]

    def run(jobs: dict[str, list[int]]) -> None:
        for p, members in jobs.items():
            for b in members:
                solved_at[b][p] = tuple(version[b][q] for q in neighbours[p])
        out.groups += 1
        for p, b in _solve_round(spec, perm_to_axes, cache, perms, jobs, tol, solver, on_cuda, out):
            version[b][p] += 1
            improved[b] = True

    while active and order == "colored":
        # lockstep: every anchor's sweep is the same cycle of classes, so round r serves class r mod C for
        # all anchors still descending (an anchor with nothing due in that class just moves on with the rest)
        jobs: dict[str, list[int]] = defaultdict(list)
        for b in sorted(active):
            if queue[b] or refill(b):
                for p in due(b, queue[b].pop(0)):
                    jobs[p].append(b)
        if jobs:
            run(jobs)
    while active:
        waiting: dict[tuple, list[tuple[int, list[str]]]] = defaultdict(list)
        for b in sorted(active):
            while queue[b] or refill(b):  # skip what needs no solve; start the next sweep when this one is done
                todo = due(b, queue[b][0])
                if todo:
                    waiting[tuple(queue[b][0])].append((b, todo))
                    break
                queue[b].pop(0)
        if not waiting:
            break
        rank = {c: i for i, c in enumerate(sorted(waiting))}
        c = max(waiting, key=lambda k: (len(waiting[k]), -rank[k]))
        jobs = defaultdict(list)
        for b, todo in waiting[c]:
            queue[b].pop(0)
            for p in todo:
                jobs[p].append(b)
        run(jobs)
    return perms, sweeps


def _solve_round(spec, perm_to_axes, cache, perms, jobs, tol, solver, on_cuda, out) -> list[tuple[str, int]]:
    """Solve, at once, permutation p for the anchors ``jobs[p]`` for every p of ``jobs`` (independent
    permutations); returns the (permutation, anchor) pairs that changed. Cost matrices: one batched
    product per tensor and permutation; host syncs: one for the shortcuts, one for the acceptance; the
    assignment problems of every size go to the solver together (one launch with ``cuda``)."""
    device = next(iter(perms.values())).device
    start = time.perf_counter()
    costs, currents, row_maxs, flags = {}, {}, {}, []
    for p, members in jobs.items():
        n = spec.perm_sizes[p]
        sel = torch.as_tensor(members, device=device)
        cost = torch.zeros((len(members), n, n), device=device)
        for k, ax, ap in perm_to_axes[p]:
            cost += cache.term(k, ax, ap, n, perms, members, sel)
        current = perms[p].index_select(0, sel)
        row_max = cost.argmax(dim=2)
        costs[p], currents[p], row_maxs[p] = cost, current, row_max
        # per anchor: share of rows at their maximum, and whether the maxima form a permutation
        flags.append(torch.stack([(row_max == current).float().mean(dim=1), is_permutation(row_max).float()], dim=1))
    flags = torch.cat(flags).tolist()  # one sync for the round
    now = time.perf_counter()
    out.seconds["costs"] = out.seconds.get("costs", 0.0) + now - start
    start = now
    todo, hard, share, at = {}, {}, {}, 0
    for p, members in jobs.items():
        f = flags[at:at + len(members)]
        at += len(members)
        todo[p] = [j for j, (s_, _) in enumerate(f) if s_ < 1.0]  # all rows at their maximum: optimal, skip
        out.skipped += len(members) - len(todo[p])
        # rows' maxima in distinct columns: optimal (it reaches Σ_i max_j C_ij), no solver needed
        direct = sum(1 for j in todo[p] if f[j][1] == 1.0)
        if direct:
            out.solvers["argmax"] = out.solvers.get("argmax", 0) + direct
        hard[p] = [t for t, j in enumerate(todo[p]) if f[j][1] != 1.0]  # positions in todo[p]
        share[p] = [f[todo[p][t]][0] for t in hard[p]]
    todo = {p: t for p, t in todo.items() if t}
    if not todo:
        return []
    subs = {p: costs[p][t].double() for p, t in todo.items()}
    cols = {p: row_maxs[p][t].clone() for p, t in todo.items()}
    need = [p for p in todo if hard[p]]
    if need:
        pos = {p: torch.as_tensor(hard[p], device=device) for p in need}
        batches = [subs[p][pos[p]] for p in need]
        if on_cuda or solver == "scipy":  # one call (cuda: one launch; scipy: the problems on host threads)
            backend = "cuda" if on_cuda else "scipy"
            found = solve_batches(batches, backend)
            for p in need:
                out.solvers[backend] = out.solvers.get(backend, 0) + len(hard[p])
        else:
            found = []
            for p, batch in zip(need, batches):
                picked = [pick_solver(solver, sh, n=spec.perm_sizes[p]) for sh in share[p]]
                host = batch.cpu().numpy()
                found.append(torch.as_tensor(np.stack([solve(c, s_) for c, s_ in zip(host, picked)]), device=device))
                for s_ in picked:
                    out.solvers[s_] = out.solvers.get(s_, 0) + 1
        for p, sol in zip(need, found):
            cols[p][pos[p]] = sol
            out.solved += len(hard[p])
    gains = []
    for p, t in todo.items():
        cur = currents[p][t]
        old_val = subs[p].gather(2, cur[:, :, None]).sum(dim=(1, 2))
        new_val = subs[p].gather(2, cols[p][:, :, None]).sum(dim=(1, 2))
        gains.append(new_val > old_val + tol * old_val.abs().clamp_min(1.0))
    better = torch.cat(gains).tolist()  # one sync
    changed, at = [], 0
    for p, t in todo.items():
        for r, j in enumerate(t):
            if better[at + r]:
                b = jobs[p][j]
                perms[p][b] = cols[p][r]
                changed.append((p, b))
        at += len(t)
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
