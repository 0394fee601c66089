"""Anchor-sharded data parallelism: each process holds, aligns and samples only its share of the anchors.

With ``anchor_sharding`` on (``auto``: when there are several processes), anchor ``i`` lives on process
``i mod world`` only, so a node holds one population, not one per process. The draws stay those of the
unsharded trainer: the micro-batch of process ``k`` at position ``b`` of epoch ``e`` uses anchor ``n_k`` and
``t_k``, a pure function of ``(seed, e, b, k)``, uniform over all ``N`` anchors (unequal shares change
nothing). Every process computes every process's draw, the owner of ``n_k`` sends that row to process ``k``
(one row received per process and micro-batch, point to point), and each process interpolates with the row
it received. Alignment: each process aligns the anchors it owns; the permutations (small) are exchanged so
every process keeps every anchor's permutation (checkpoints, the result).

:class:`AnchorStore` is the seam the trainer uses (``rows_for``, ``permute``, ``align``, ``owns``). Under FSDP2
(``fsdp.py``) it holds every anchor, as this process's shards of θ's layout (no anchor sharding), and the
alignment goes through the sharded star instead.
Errors while loading a share are agreed on: every process raises the first one, process 0 prints it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import QuietUserError, UserError
from ..matching.population import align_rows
from ..spec import apply_permutation
from .anchors import population_dtype

__all__ = ["AnchorStore", "load_anchor_store", "sharding_enabled", "agree_on_error", "is_identity"]


def is_identity(v: torch.Tensor) -> bool:
    """Whether a permutation (index vector) is the identity; an orthogonal map (a matrix) never counts as one."""
    return v.ndim == 1 and torch.equal(v, torch.arange(v.numel()))


def sharding_enabled(setting: str, world: int) -> bool:
    """``anchor_sharding`` (auto | on | off) for ``world`` processes."""
    return setting == "on" or (setting == "auto" and world > 1)


class AnchorStore:
    """The anchor rows this process holds (``rows``: ``[len(owned), P]``, in the star's frame)."""

    def __init__(self, rows: torch.Tensor, owned: Sequence[int], num_anchors: int, rank: int, world: int,
                 sharded: bool, device):
        self.rows, self.owned, self.num_anchors = rows, list(owned), num_anchors
        self.rank, self.world, self.sharded, self.device = rank, world, sharded, torch.device(device)

    def owner(self, i: int) -> int:
        return i % self.world if self.sharded else self.rank

    def owns(self, i: int) -> bool:
        return self.owner(i) == self.rank

    def row(self, i: int) -> torch.Tensor:
        """Anchor ``i``'s row (this process must own it)."""
        if not self.owns(i):
            raise KeyError(f"anchor {i} is held by process {self.owner(i)}, not {self.rank}")
        return self.rows[i // self.world if self.sharded else i]

    @property
    def nbytes(self) -> int:
        return self.rows.numel() * self.rows.element_size()

    def _comm_device(self) -> torch.device:
        import torch.distributed as dist

        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def rows_for(self, draws: Sequence[int]) -> torch.Tensor:
        """The row of anchor ``draws[rank]`` on the training device; ``draws[k]``: the anchor process ``k``
        drew for this micro-batch. Sharded, this process sends the rows it owns to the processes that drew
        them (every process calls this with the same ``draws``)."""
        n = draws[self.rank]
        if not self.sharded or self.world == 1:
            return self.row(n).to(self.device, non_blocking=True)
        import torch.distributed as dist

        comm = self._comm_device()
        ops = [dist.P2POp(dist.isend, self.row(m).to(comm), k)
               for k, m in enumerate(draws) if k != self.rank and self.owns(m)]
        received = None
        if not self.owns(n):
            received = torch.empty(self.rows.shape[1], dtype=self.rows.dtype, device=comm)
            ops.append(dist.P2POp(dist.irecv, received, self.owner(n)))
        if ops:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        row = self.row(n) if received is None else received
        return row.to(self.device, non_blocking=True)

    @torch.no_grad()
    def permute(self, i: int, perm: dict[str, torch.Tensor], spec, layout) -> None:
        """Permute the row of anchor ``i`` (owned) in place, where it lives (through one transient copy)."""
        if all(is_identity(v) for v in perm.values()):
            return
        row = self.row(i)
        row.copy_(layout.flatten(apply_permutation(spec, perm, layout.views(row)), device=row.device))

    def align(self, spec, layout, theta: torch.Tensor, anchors: Sequence[int], seed: int, max_iter: int,
              solver: str, order: str, presolve: bool | str = False) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """[(anchor, permutation)] aligning each owned anchor of ``anchors`` to θ (anchor ``i`` seeded ``seed+i``)."""
        mine = [i for i in anchors if i % self.world == self.rank]  # unsharded: the work is still split
        if not mine:
            return []
        local = [i // self.world if self.sharded else i for i in mine]
        found = align_rows(spec, layout, theta, self.rows, local, [seed + i for i in mine], max_iter, solver,
                           order=order, presolve=presolve)
        return list(zip(mine, found.perms))


def agree_on_error(error: BaseException | None, world: int, extra=None) -> list:
    """Exchange ``(error message or None, extra)`` between processes; if any process failed, every process
    raises the first failure (process 0 as a :class:`UserError`, the others quietly). Returns the ``extra``s."""
    if world == 1:
        if error is not None:
            raise error
        return [extra]
    from accelerate import PartialState
    from accelerate.utils import gather_object

    message = None if error is None else str(error)
    gathered = gather_object([(message, extra)])
    failed = [m for m, _ in gathered if m is not None]
    if failed:
        cls = UserError if PartialState().process_index == 0 else QuietUserError
        raise cls(failed[0]) from None
    return [x for _, x in gathered]


def _load_rows(sources, owned, layout, spec, device, transform, flat) -> tuple[torch.Tensor, list]:
    """The owned anchors in one ``[len(owned), P]`` matrix on ``device`` (pinned host memory when the
    training device is a GPU and the rows stay on the host), one state dict at a time."""
    rows = None
    for j, i in enumerate(owned):
        src = sources[i]
        sd = transform(src.load())  # loaded on demand, one at a time
        try:
            spec.subset(sd.keys()).validate(sd)
        except ValueError as e:
            raise UserError(f"anchor {src.name}: {e}") from None
        missing = set(layout.names) - set(sd)
        if missing:
            raise UserError(f"anchor {src.name} lacks parameter {sorted(missing)[0]!r}; is it the same architecture?")
        dtype = population_dtype(sd, layout.names)
        if rows is None:
            rows = torch.empty(len(owned), flat.total, dtype=dtype, **device)
        elif dtype != rows.dtype:  # mixed dtypes: float32
            rows = rows.float()
        rows[j].copy_(flat.flatten(sd, dtype=rows.dtype))
    return rows, [] if rows is None else [rows.dtype]


def load_anchor_store(sources, layout, spec, device, anchor_device: str, rank: int, world: int,
                      sharded: bool, transform=None, flat=None) -> AnchorStore:
    """Load this process's anchors (all, or its share) into an :class:`AnchorStore` of one dtype: the
    population's bf16 / fp16 when every anchor of every process has it, else float32. ``transform``: applied
    to each loaded state dict (the star's form: folded with ``symmetry=orthogonal``); ``flat``: the layout of a
    row (default ``layout``; FSDP2: this process's shards)."""
    flat = flat or layout
    device = torch.device(device)
    on_device = device.type != "cpu" and anchor_device == "accelerator"
    where = {"device": device if on_device else "cpu", "pin_memory": device.type == "cuda" and not on_device}
    owned = list(range(rank, len(sources), world)) if sharded else list(range(len(sources)))
    rows, dtypes, error = None, [], None
    try:
        rows, dtypes = _load_rows(sources, owned, layout, spec, where, transform or (lambda sd: sd), flat)
    except UserError as e:
        error = e
    if sharded:  # one error for all processes, and one dtype (a share may hold none: world > N)
        dtypes = [d for ds in agree_on_error(error, world, [str(d) for d in dtypes]) for d in ds]
        dtypes = [getattr(torch, d.split(".")[-1]) for d in dtypes]
    elif error is not None:
        raise error
    dtype = dtypes[0] if len(set(dtypes)) == 1 else torch.float32
    if rows is None:
        rows = torch.empty(0, flat.total, dtype=dtype, **where)
    elif rows.dtype != dtype:
        rows = rows.to(dtype)
    return AnchorStore(rows, owned, len(sources), rank, world, sharded, device)
