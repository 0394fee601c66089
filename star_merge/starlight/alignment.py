"""Re-aligning the anchors to the star: the trainer's alignment steps (a mixin of :class:`StarlightTrainer`).

At the start of every ``align_every``-th epoch the anchors the schedule names (:mod:`.schedule`: all, or with
``align_schedule=adaptive`` those whose permutation changed lately) are weight-matched to θ, each process
the anchors it holds (:mod:`.distributed`); the permutations are exchanged so every process keeps every
anchor's, and each process permutes the rows it holds. ``align_overlap``: the matching runs in a background
thread during the epoch (on every process, its own anchors) and is applied at the next re-alignment.
"""

from __future__ import annotations

import functools
import time

import torch

from ..matching.population import BackgroundAlignment
from ..spec import compose_permutations
from .distributed import is_identity

__all__ = ["AnchorAlignment"]


class AnchorAlignment:
    """Alignment steps of the trainer; uses its ``args``, ``store``, ``schedule``, ``state``, ``flat_star``."""

    def _align_rows(self, theta: torch.Tensor, anchors=None):  # [(anchor, permutation)] of this process's rows
        a = self.args
        anchors = range(self.store.num_anchors) if anchors is None else anchors
        return self.store.align(self.match_spec, self.layout, theta.detach(), anchors, a.seed, a.matching_max_iter,
                                a.matching_solver, a.matching_order, presolve=self._presolve())

    def _presolve(self):  # matching_presolve: "first" presolves while the rows are still in their own frames
        return self.args.presolve_at(first=not self.state.perms)

    def align_anchors(self, theta: torch.Tensor, state, progress: bool, found=None,
                      anchors=None) -> list[tuple[int, bool]]:
        """Weight-match ``anchors`` (default all) to θ, each process its own, and exchange the permutations;
        apply them to the rows held here and compose every one into ``state.perms``. Rows are in the last
        alignment's frame (a warm start); ``found``: an ``_align_rows`` result (overlap). Returns
        [(anchor, whether its permutation changed)]."""
        from accelerate.utils import gather_object

        a = self.args
        if self.fsdp:  # owners gather, align and re-shard their anchors (rows permuted there; all anchors)
            gathered = self.bound.align(theta, self.anchors, self.match_spec, a.seed, a.matching_max_iter,
                                        a.matching_solver, a.matching_order, presolve=self._presolve())
        else:
            mine = found if found is not None else self._align_rows(theta, anchors)
            gathered = gather_object(mine) if self.accelerator.num_processes > 1 else mine
        changed = []
        for i, delta in sorted(gathered, key=lambda x: x[0]):
            name = self.anchor_names[i]
            if self.store.owns(i) and not self.fsdp:
                self.store.permute(i, delta, self.match_spec, self.layout)
            state.perms[name] = compose_permutations(delta, state.perms[name]) if name in state.perms else delta
            changed.append((i, not all(is_identity(v) for v in delta.values())))
        return changed

    def permute_rows(self, perms: dict[int, dict[str, torch.Tensor]]) -> None:
        """Permute anchor rows in place (FSDP2: each gathered on one process, permuted and re-sharded)."""
        if self.fsdp:
            return self.bound.permute_rows(self.anchors, perms, self.match_spec)
        for i, perm in perms.items():
            self.permute_row(i, perm)

    def permute_row(self, i: int, perm: dict[str, torch.Tensor]) -> None:
        """Permute anchor ``i``'s row in place, where it lives (this process must hold it)."""
        self.store.permute(i, perm, self.match_spec, self.layout)

    def _align_at_epoch_start(self, epoch: int) -> None:
        """The schedule's anchors re-aligned to θ (``align_overlap``: in the background, applied next time)."""
        c, state, theta = self.args, self.state, self.flat_star.theta
        started = time.perf_counter()
        overlap = c.align_overlap and state.aligned_epoch >= 0
        if self._pending is not None:  # align_overlap: apply the alignment to the previous epoch's θ
            (launched, job), self._pending = self._pending, None
            self._record(launched, self.align_anchors(theta, state, False, found=job.result()))
        due = self.schedule.due(epoch)
        if overlap and epoch + c.align_every < c.num_train_epochs:  # a later epoch applies it
            self._pending = (epoch, BackgroundAlignment(functools.partial(self._align_rows, anchors=due), theta))
        elif not overlap:
            self._record(epoch, self.align_anchors(theta, state, self.accelerator.is_local_main_process, anchors=due))
        state.aligned_epoch = epoch
        self._epoch_align = {"align_seconds": time.perf_counter() - started, "aligned": len(due)}

    def _record(self, epoch: int, changed) -> None:
        for i, moved in changed:
            self.schedule.record(epoch, i, moved)

