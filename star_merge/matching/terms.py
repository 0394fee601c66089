"""The terms of weight matching's cost matrices, for a batch of models: built, cached, updated in place.

A permutation p's cost matrix for model b is ``C_b = Σ_(k, ax) A_k @ π_b(B_k)^T`` over every
(tensor k, axis ax) that p acts on: ``A_k`` and ``B_k`` are reshaped with axis ax's units in front
(:func:`to_blocks`) and π_b(B_k) has every OTHER permuted axis of k mapped by b's current maps. One
term changes only when a map on one of k's other axes changes, so :class:`TermCache` keeps them: valid
while those maps are the ones it was built with; when exactly one of them moved ``|S| <= size //
RANK_UPDATE_SHARE`` units, updated by a rank-|S| product (``term += A[S] @ (B_new[S] - B_old[S])^T``,
2·n²·|S| flops instead of 2·n²·size); otherwise rebuilt. Single-model weight matching is the batch of
one (its products are then the 2-D ones, the arithmetic of one model); the population alignment caches
the terms of every anchor at once ([G, n, n], one batched product per tensor).

Seams for what extends matching (keep them single):

- **Group kinds.** A spec's permutation may later be another group (issue 25: orthogonal maps). Which
  kind a name is comes from :func:`group_kind`; mapping a tensor's axis by a group element goes through
  :func:`apply_maps` only (a new kind adds its branch there), and solving a group's cost matrices goes
  through ``solvers.solve_group`` only. The rank-|S| update is specific to permutations (units that
  moved); other kinds rebuild their terms.
- **Segments.** An axis may be a concatenation of segments, each permuted by its own permutation
  (DenseNet's concatenated features): ``spec.perm_to_axes`` then lists one (tensor, axis, entry) per
  segment and ``entry.offset`` / ``entry.span`` give the segment's first element and length along the
  axis. Terms read a segment through :func:`segment`, so only the segment's slice of A and B enters the
  cost matrix; terms whose other axes are segmented are rebuilt rather than rank-updated.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..groups import PERMUTATION, map_axis
from ..spec import AxisPerm, PermutationSpec, group_kind

__all__ = ["CACHE_MIN_ROW", "RANK_UPDATE_SHARE", "TermCache", "to_blocks", "blocks_batched", "expand_batched",
           "index_batched", "apply_maps", "segment", "group_kind", "neighbours"]

# A (tensor, axis) term is cached when building it costs at least this many flops per cached number
# (2·n²·r flops for n² numbers: r = elements per unit); smaller ones (BatchNorm vectors) are rebuilt.
CACHE_MIN_ROW = 16
# A cached term is updated by a rank-|S| product when at most size // RANK_UPDATE_SHARE units moved.
RANK_UPDATE_SHARE = 4


def segment(w: torch.Tensor, axis: int, entry) -> torch.Tensor:
    """``w``'s slice along ``axis`` that ``entry`` covers (``entry.offset``, ``entry.span``; whole axis if absent)."""
    offset = getattr(entry, "offset", None)
    if offset is None:
        return w
    return w.narrow(axis, int(offset), int(entry.span))


def to_blocks(w: torch.Tensor, axis: int, ap: AxisPerm, n: int) -> torch.Tensor:
    """Move ``axis`` to the front and reshape to [n, everything else] grouping each permuted block."""
    w = torch.movedim(segment(w, axis, ap), axis, 0)
    rest = w.shape[1:]
    w = w.reshape(ap.repeat, n, ap.block, *rest)
    w = torch.movedim(w, 1, 0)
    return w.reshape(n, -1)


def blocks_batched(w: torch.Tensor, dim: int, ap: AxisPerm, n: int) -> torch.Tensor:
    """:func:`to_blocks` of every batch member: [g, *shape] -> [g, n, everything else]."""
    g = w.shape[0]
    w = torch.movedim(segment(w, dim, ap), dim, 1)
    rest = w.shape[2:]
    w = w.reshape(g, ap.repeat, n, ap.block, *rest)
    return torch.movedim(w, 2, 1).reshape(g, n, -1)


def expand_batched(perm: torch.Tensor, ap: AxisPerm, size: int | None = None) -> torch.Tensor:
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


def index_batched(w: torch.Tensor, dim: int, idx: torch.Tensor) -> torch.Tensor:
    """``w[b].index_select(dim - 1, idx[b])`` for every b of a batched tensor."""
    w = torch.movedim(w, dim, 1)
    w = w[torch.arange(w.shape[0], device=w.device)[:, None], idx]
    return torch.movedim(w, 1, dim)


def apply_maps(w: torch.Tensor, axes, maps: Mapping[str, torch.Tensor], skip=(), batched: bool = False) -> torch.Tensor:
    """``w`` with every mapped axis but those in ``skip`` taken through its group's current map.

    Unbatched, ``maps[p]`` is one map ([n] for a permutation, [n, n] for an orthogonal map); batched, ``w``
    and every ``maps[p]`` carry a leading batch dimension (axis i of the tensor is dimension i + 1). The one
    place a tensor's axis meets a group element (through ``groups.map_axis``: index selection for a
    permutation, a matrix product for an orthogonal map).
    """
    for i, a in enumerate(axes):
        if a is None or i in skip:
            continue
        m = maps[a.perm].to(w.device)
        if batched and not m.is_floating_point():
            w = index_batched(w, i + 1, expand_batched(m, a))
        else:
            w = map_axis(w, i + 1 if batched else i, m, a, batched=batched)
    return w


def neighbours(spec: PermutationSpec, perm_to_axes) -> dict[str, list[str]]:
    """Permutation -> the other permutations sharing a tensor with it (its cost matrix depends on them)."""
    return {
        p: sorted({a.perm for k, ax, _ in axes for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax} - {p})
        for p, axes in perm_to_axes.items()
    }


class TermCache:
    """Every model's term ``A_blocks @ π(B)_blocks^T`` per (tensor, axis), [G, n, n] (module docstring).

    ``A``: tensor name -> A's tensor; ``a_blocks``: (tensor, axis) -> ``to_blocks`` of it; ``B``: tensor name
    -> [G, *shape], the G models; ``version[b]``: permutation -> how often model b's map changed (the keys
    of the cache). A term is cached while the cache holds at most ``budget`` numbers and building it costs at
    least ``CACHE_MIN_ROW`` flops per number; the rest are rebuilt when used.
    """

    def __init__(self, spec, A, a_blocks, B, version, budget: int):
        self.spec, self.A, self.a_blocks, self.B, self.version = spec, A, a_blocks, B, version
        self.g = next(iter(B.values())).shape[0]
        self.budget = budget
        # (k, ax) -> [term [G, n, n], keys per model (None: not built), snaps {axis i: [G, n_i]}, other axes]
        self.entries: dict = {}

    def rebase(self, perms: Mapping[str, torch.Tensor]) -> None:
        """Start a new descent whose versions restart at 0 from ``perms``: a cached term stays valid where the
        maps it was built with are the current ones (key 0, as if built now); other axes get key -1 (updated
        or rebuilt when first used)."""
        for (k, _ax), (_, keys, snaps, others) in self.entries.items():
            axes_k = self.spec.axes_to_perm[k]
            for b, key in enumerate(keys):
                if key is not None:
                    keys[b] = tuple(0 if torch.equal(snaps[i][b], perms[axes_k[i].perm][b]) else -1 for i in others)

    def _build(self, k, ax, ap, n, perms, sel):
        axes = self.spec.axes_to_perm[k]
        if self.g == 1:  # one model: the 2-D product (the arithmetic of single-model weight matching)
            wb = apply_maps(self.B[k][0], axes, {p: v[0] for p, v in perms.items()}, skip=(ax,))
            return (self.a_blocks[(k, ax)] @ to_blocks(wb, ax, ap, n).T)[None]
        w = apply_maps(self.B[k].index_select(0, sel), axes, {p: v.index_select(0, sel) for p, v in perms.items()},
                       skip=(ax,), batched=True)
        return torch.matmul(self.a_blocks[(k, ax)], blocks_batched(w, ax + 1, ap, n).transpose(1, 2))

    def _rank_update(self, k, ax, ap, n, i, perms, sel, old_p, new_p, mask, s):
        """A[S] @ (π_new(B)[S] - π_old(B)[S])^T for the models ``sel``, S the units of axis i that moved
        (padded to s: padding units did not move, their difference is 0)."""
        spec = self.spec
        a, axes = spec.axes_to_perm[k][i], spec.axes_to_perm[k]
        units = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :s]  # moved units first
        pos = expand_batched(units, a, old_p.shape[1])
        new_e, old_e = expand_batched(new_p, a).gather(1, pos), expand_batched(old_p, a).gather(1, pos)
        if self.g == 1:
            w = apply_maps(self.B[k][0], axes, {p: v[0] for p, v in perms.items()}, skip=(ax, i))
            diff = torch.index_select(w, i, new_e[0]) - torch.index_select(w, i, old_e[0])
            a_sel = to_blocks(torch.index_select(self.A[k], i, pos[0]), ax, ap, n)
            return (a_sel @ to_blocks(diff, ax, ap, n).T)[None]
        w = apply_maps(self.B[k].index_select(0, sel), axes, {p: v.index_select(0, sel) for p, v in perms.items()},
                       skip=(ax, i), batched=True)
        diff = index_batched(w, i + 1, new_e) - index_batched(w, i + 1, old_e)
        a_sel = index_batched(self.A[k].expand(len(sel), *self.A[k].shape), i + 1, pos)
        return torch.matmul(blocks_batched(a_sel, ax + 1, ap, n), blocks_batched(diff, ax + 1, ap, n).transpose(1, 2))

    def _entry(self, k, ax, n, device):
        """The cache entry of (k, ax), created when it fits the budget; ``None``: not cached."""
        entry = self.entries.get((k, ax))
        if entry is not None:
            return entry
        if self.A[k].numel() // n < CACHE_MIN_ROW or self.g * n * n > self.budget:
            return None
        self.budget -= self.g * n * n
        spec = self.spec
        others = [i for i, a in enumerate(spec.axes_to_perm[k]) if a is not None and i != ax]
        entry = [torch.zeros((self.g, n, n), device=device, dtype=self.A[k].dtype), [None] * self.g,
                 {i: self._snapshot(spec.axes_to_perm[k][i].perm, device) for i in others}, others]
        self.entries[(k, ax)] = entry
        return entry

    def _snapshot(self, p, device):
        """Room for every model's map of group p (what a cached term was built with)."""
        n = self.spec.perm_sizes[p]
        if group_kind(self.spec, p) == PERMUTATION:
            return torch.zeros((self.g, n), dtype=torch.long, device=device)
        return torch.zeros((self.g, n, n), dtype=torch.float64, device=device)

    def _refresh(self, k, ax, ap, n, perms, entry, stale) -> None:
        """Bring the stale models' cached terms up to date: a rank-|S| update where one other axis moved few
        units (of a permutation, unsegmented), a rebuild otherwise."""
        term, keys, snaps, others = entry
        axes_k = self.spec.axes_to_perm[k]
        device = term.device
        rebuild, by_axis = [], {}
        for b, now in stale.items():
            changed = [] if keys[b] is None else [i for i, o, c in zip(others, keys[b], now) if o != c]
            if len(changed) == 1 and self._updatable(axes_k[changed[0]]):
                by_axis.setdefault(changed[0], []).append(b)
            else:
                rebuild.append(b)
        for i, bs in by_axis.items():
            idx = torch.as_tensor(bs, device=device)
            old_p, new_p = snaps[i].index_select(0, idx), perms[axes_k[i].perm].index_select(0, idx)
            mask = old_p != new_p
            counts = mask.sum(dim=1).tolist()  # one sync per (tensor, axis) and round
            size = new_p.shape[1]
            upd = [j for j, c in enumerate(counts) if 0 < c <= size // RANK_UPDATE_SHARE]
            rebuild += [b for b, c in zip(bs, counts) if c > size // RANK_UPDATE_SHARE]
            if upd:
                u = torch.as_tensor(upd, device=device)
                rows = idx.index_select(0, u)
                term.index_add_(0, rows, self._rank_update(
                    k, ax, ap, n, i, perms, rows, old_p.index_select(0, u), new_p.index_select(0, u),
                    mask.index_select(0, u), max(counts[j] for j in upd)))
        if rebuild:
            idx = torch.as_tensor(sorted(rebuild), device=device)
            term.index_copy_(0, idx, self._build(k, ax, ap, n, perms, idx))
        idx = torch.as_tensor(list(stale), device=device)
        for i in others:
            snaps[i].index_copy_(0, idx, perms[axes_k[i].perm].index_select(0, idx))
        for b, now in stale.items():
            keys[b] = now

    def _updatable(self, a) -> bool:
        return group_kind(self.spec, a.perm) == PERMUTATION and getattr(a, "offset", None) is None

    def term(self, k, ax, ap, n, perms, members, sel):
        """The term of (k, ax) for the models ``members`` ([m, n, n], ``sel`` their indices as a tensor)."""
        entry = self._entry(k, ax, n, sel.device)
        if entry is None:
            return self._build(k, ax, ap, n, perms, sel)
        axes_k = self.spec.axes_to_perm[k]
        stale = {}
        for b in members:
            now = tuple(self.version[b][axes_k[i].perm] for i in entry[3])
            if entry[1][b] != now:
                stale[b] = now
        if stale:
            self._refresh(k, ax, ap, n, perms, entry, stale)
        return entry[0].index_select(0, sel)
