"""Which anchors a re-alignment epoch re-aligns (``align_schedule``).

- ``fixed``: every anchor at every ``align_every``-th epoch (epoch 0 included).
- ``adaptive``: an anchor whose permutation did not change at its last re-alignment (its maps were
  already the best found for the star) waits twice as long before the next one, up to
  ``max_interval × align_every`` epochs; a re-alignment that changes it brings it back to every
  ``align_every``-th epoch. Re-alignments stay on the ``align_every`` grid, and the final alignment
  after training still aligns every anchor.

The schedule is part of the checkpoint state (``state_dict``), so a resumed run re-aligns what the
uninterrupted run would.
"""

from __future__ import annotations

__all__ = ["AlignSchedule"]


class AlignSchedule:
    """Per-anchor next re-alignment epoch and interval (in epochs)."""

    def __init__(self, kind: str, num_anchors: int, align_every: int, max_interval: int = 8):
        if kind not in ("fixed", "adaptive"):
            raise ValueError(f"align_schedule {kind!r}")
        self.kind, self.align_every, self.max_interval = kind, align_every, max_interval
        self.next = [0] * num_anchors
        self.interval = [align_every] * num_anchors

    def epoch_due(self, epoch: int) -> bool:
        """Whether ``epoch`` is on the re-alignment grid (``align_every`` 0: never)."""
        return self.align_every > 0 and epoch % self.align_every == 0

    def due(self, epoch: int) -> list[int]:
        """The anchors to re-align at the start of ``epoch``."""
        if not self.epoch_due(epoch):
            return []
        if self.kind == "fixed":
            return list(range(len(self.next)))
        return [i for i, e in enumerate(self.next) if e <= epoch]

    def record(self, epoch: int, anchor: int, changed: bool) -> None:
        """Anchor ``anchor`` was re-aligned at ``epoch``; ``changed``: its permutation moved."""
        if self.kind == "fixed" or self.align_every == 0:
            return
        if changed:
            self.interval[anchor] = self.align_every
        else:
            self.interval[anchor] = min(2 * self.interval[anchor], self.max_interval * self.align_every)
        self.next[anchor] = epoch + self.interval[anchor]

    def state_dict(self) -> dict:
        return {"kind": self.kind, "next": list(self.next), "interval": list(self.interval)}

    def load_state_dict(self, d: dict | None) -> None:
        if not d or d.get("kind") != self.kind or len(d["next"]) != len(self.next):
            return  # a checkpoint without it (or of the other schedule): start the schedule afresh
        self.next, self.interval = [int(e) for e in d["next"]], [int(e) for e in d["interval"]]
