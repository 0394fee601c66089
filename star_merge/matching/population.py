"""Align a population of flat anchors to one flat star where they live, batched across anchors.

Starlight re-aligns every anchor to the star θ each epoch. :func:`align_rows` runs, for every anchor,
the coordinate descent of :func:`weight_matching` (one engine, :mod:`.descent`: same seeded visiting
order per anchor, same skipped problems, same acceptance test; no restarts), but

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

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..spec import PermutationSpec, SpecError, identity_permutation
from .descent import DescentOptions, DescentStats, MatchingProblem, check_order, descend
from .solvers import available_solvers, check_solver
from .weight_matching import weight_matching

__all__ = ["PopulationAlignment", "align_rows", "align_slice", "BackgroundAlignment"]


@dataclass
class PopulationAlignment(DescentStats):
    """``perms[j]``: the permutation aligning row ``indices[j]`` to θ (CPU LongTensors), ``sweeps[j]``
    its sweeps; the counters of :class:`~.descent.DescentStats` (``skipped``, ``groups`` and ``seconds``:
    batched path only)."""

    perms: list[dict[str, torch.Tensor]] = field(default_factory=list)
    sweeps: list[int] = field(default_factory=list)


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
    A = _views(flat, views, names)
    out = PopulationAlignment()
    if batched is None:
        batched = device.type == "cuda"
    if order == "auto":
        order = "colored" if batched else "random"
    check_order(order)
    options = DescentOptions(max_iter=max_iter, tol=tol, solver=solver, order=order,
                             on_device=device.type == "cuda" and solver in ("auto", "cuda") and "cuda" in available_solvers())
    if not batched:
        for i, seed in zip(indices, seeds):
            b = _views(rows[i].to(device, torch.float32, non_blocking=True), views, names)
            counts: dict = {}
            res = weight_matching(spec, A, b, seed=seed, max_iter=max_iter, tol=tol, validate=False, solver=solver,
                                  restarts=0, counts=counts, track=False, order=order)
            out.perms.append(res.perm)
            out.sweeps.append(res.iterations)
            out.solved += sum(c for s_, c in counts.items() if s_ != "argmax")
            for s_, c in counts.items():
                out.solvers[s_] = out.solvers.get(s_, 0) + c
        return out
    _align_batched(spec, A, rows, views, names, indices, seeds, options, out, layout.total, chunk_elements,
                   cache_elements)
    return out


def _views(flat: torch.Tensor, views, names, batch: int | None = None) -> dict[str, torch.Tensor]:
    """Tensor name -> its view of a flat vector (or of each row of a [batch, total] chunk)."""
    if batch is None:
        return {k: flat[views[k][0]:views[k][0] + views[k][1]].view(views[k][2]) for k in names}
    return {k: flat[:, views[k][0]:views[k][0] + views[k][1]].view(batch, *views[k][2]) for k in names}


def _align_batched(spec, A, rows, views, names, indices, seeds, options, out, total, chunk_elements, cache_elements):
    """The batched path of :func:`align_rows`: chunks of anchors, each one batched descent."""
    device = next(iter(A.values())).device
    if chunk_elements is None:
        chunk_elements = 2**26
        if device.type == "cuda":  # a quarter of the free device memory (float32), at least 2 GiB
            chunk_elements = max(2**29, torch.cuda.mem_get_info(device)[0] // 16)
    per_chunk = max(1, int(chunk_elements) // max(1, total))
    a_blocks = None
    for start in range(0, len(indices), per_chunk):
        idx = list(indices[start:start + per_chunk])
        chunk = rows[torch.as_tensor(idx, device=rows.device)].to(device, torch.float32, non_blocking=True)
        B = _views(chunk, views, names, len(idx))
        problem = MatchingProblem.build(spec, A, B, cache_elements=chunk_elements if cache_elements is None
                                        else cache_elements, a_blocks=a_blocks)
        a_blocks = problem.a_blocks
        perms = {p: v.to(device).repeat(len(idx), *([1] * v.ndim)) for p, v in identity_permutation(spec).items()}
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start:start + per_chunk]]
        out.sweeps += descend(problem, perms, gens, options, out)
        out.perms += [{p: v[j].cpu() for p, v in perms.items()} for j in range(len(idx))]
        del chunk, B, problem


def align_slice(spec, layout, theta, rows, rank: int, world: int, seed: int, max_iter: int = 100,
                solver: str = "auto", order: str = "auto") -> list[tuple[int, dict[str, torch.Tensor]]]:
    """One process's share of a population alignment, [(row, permutation)]: rows rank, rank+world, ...;
    row i seeded seed+i (on θ's device: no host copy of θ or of the rows)."""
    indices = list(range(rank, rows.shape[0], world))
    found = align_rows(spec, layout, theta, rows, indices, [seed + i for i in indices], max_iter, solver, order=order)
    return list(zip(indices, found.perms))


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
