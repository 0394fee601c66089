"""θ's gradient averaged over processes at each optimizer step, and stopping on SIGTERM.

:class:`GradientReducer`: with ``overlap`` off, one ``all_reduce`` of the flat gradient after the
backward; with it on, the flat gradient is cut into buckets (``bucket_numel`` numbers, in reverse layout
order: the order the backward completes them) and each bucket is all-reduced asynchronously as soon as
the backward has accumulated every parameter in it (post-accumulate-grad hooks, as DDP does), so the
communication of the last layers overlaps the backward of the first. Buckets are launched in the same
order on every process (bucket ``b`` only after ``0..b-1``); those the backward did not reach (unused
parameters) are launched after it.

:class:`StopRequest`: SIGTERM (a cluster's preemption) sets a flag; the trainer asks, after each optimizer
step, whether any process got one (one small ``all_reduce``), saves a checkpoint and exits with 143.
"""

from __future__ import annotations

import signal
import threading

import torch

__all__ = ["GradientReducer", "StopRequest", "Preempted"]


class GradientReducer:
    """Average ``out`` (θ's gradient) over ``world`` processes, at once or overlapped with the backward."""

    def __init__(self, model, layout, grads: torch.Tensor, world: int, overlap: bool, bucket_numel: int):
        self.world, self.overlap = world, overlap and world > 1
        self.grads = grads
        self._armed = None  # (base, scale, out) during an overlapped backward
        self._works: list = []
        if not self.overlap:
            return
        self.buckets: list[tuple[int, int]] = []  # [lo, hi) of the flat buffer, reverse layout order
        self._bucket_of: dict[str, int] = {}
        hi, pending = layout.total, []
        for name, off, numel in reversed(list(zip(layout.names, layout.offsets, layout.numels))):
            pending.append(name)
            if hi - off >= bucket_numel or off == 0:
                for n in pending:
                    self._bucket_of[n] = len(self.buckets)
                self.buckets.append((off, hi))
                hi, pending = off, []
        self._size = [0] * len(self.buckets)
        for n, b in self._bucket_of.items():
            self._size[b] += 1
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(self._hook(self._bucket_of[name]))

    def _hook(self, bucket: int):
        def hook(_param):
            if self._armed is None:
                return
            self._done[bucket] += 1
            if self._done[bucket] == self._size[bucket]:
                self._ready[bucket] = True
                self._launch_ready()
        return hook

    def _launch(self, b: int) -> None:
        import torch.distributed as dist

        base, scale, out = self._armed
        lo, hi = self.buckets[b]
        torch.add(base[lo:hi], self.grads[lo:hi], alpha=scale, out=out[lo:hi])
        self._works.append(dist.all_reduce(out[lo:hi], async_op=True))

    def _launch_ready(self) -> None:
        while self._next < len(self.buckets) and self._ready[self._next]:
            self._launch(self._next)
            self._next += 1

    def overlapping(self, sync: bool) -> bool:
        """Whether the next backward reduces as it goes (an optimizer step's last backward, overlap on)."""
        return self.overlap and sync

    def arm(self, base: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """Before the last backward of a step: bucket ``b`` of ``out`` becomes ``base + scale·grads``, reduced."""
        self._armed = (base, scale, out)
        self._done, self._ready, self._next = [0] * len(self.buckets), [False] * len(self.buckets), 0
        self._works = []

    def reduce(self, out: torch.Tensor) -> None:
        """After the backward: ``out`` averaged over the processes (finishing the overlapped buckets)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if self._armed is not None:
            for b in range(self._next, len(self.buckets)):  # not reached by the backward
                self._launch(b)
            self._armed = None
        else:
            self._works = [dist.all_reduce(out, async_op=True)]
        for work in self._works:
            work.wait()
        self._works = []
        out.div_(self.world)


class Preempted(SystemExit):
    """Raised after the checkpoint a SIGTERM asked for: the process exits with 143 (128 + SIGTERM)."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


class StopRequest:
    """Within ``with``: SIGTERM sets a flag instead of ending the process (main thread only)."""

    def __init__(self):
        self.flag = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
        return False

    def _on_signal(self, _signum, _frame):
        self.flag = True

    def requested(self, world: int, device) -> bool:
        """Whether any process got SIGTERM (every process calls this at the same point)."""
        if world == 1:
            return self.flag
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.flag else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
