"""FSDP2 mode of the Starlight trainer, for stars that do not fit one device.

Selected as Accelerate users select FSDP2: ``accelerate launch --use_fsdp --fsdp_version 2 ...`` or
``--config_file recipes/accelerate_configs/fsdp2.yaml``. Accelerate reports ``distributed_type == FSDP`` on
GPUs; on CPU it keeps ``MULTI_CPU`` (gloo) and the launcher's ``ACCELERATE_USE_FSDP`` / ``FSDP_VERSION``
environment says FSDP2 was asked for, so :func:`fsdp_requested` reads both.

- The model's parameters are sharded with ``torch.distributed.fsdp.fully_shard`` (Accelerate's wrap policy:
  one FSDP group per transformer block, then the root); they hold the *interpolated* weights.
- θ, its gradient and the optimizer state are this process's flat local shards (:class:`ShardLayout`: the same
  dim-0 chunks ``fully_shard`` gives every parameter, concatenated), so AdamW runs on 1/world of the star.
- Every anchor is stored as the same local shards, on the host in the population dtype ([N, local] matrix).
- A step draws one (n, t) for all processes (rank 0's draw), writes ``lerp(θ_local, anchor_n_local, t)`` into
  each parameter's local shard, runs forward / backward (FSDP all-gathers, and reduce-scatters the averaged
  gradient), and θ's gradient is ``(1-t)·`` the local gradient shard, as in the one-device trainer.
- Alignment: θ is gathered once (host, float32); anchors go round in rounds of ``world``: anchor i is gathered on
  process ``i % world`` only, which weight-matches it to θ on full tensors, permutes it and scatters the shards
  back (one full anchor per process at a time). Checkpoints hold the gathered θ and optimizer state (world-size
  independent); the exported star is the gathered θ in an ordinary, unsharded model.
"""

from __future__ import annotations

import copy
import json
import os

import torch
from torch import nn

from ..errors import UserError

__all__ = ["ShardLayout", "ShardedStar", "check_fsdp_run", "fsdp_requested", "unprepared_optimizer"]

OPTIMIZER_FILE = "starlight_fsdp_optimizer.safetensors"


def fsdp_requested(accelerator) -> bool:
    """True when this run was launched for FSDP2 (a UserError for FSDP1, which Starlight does not drive)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        version = accelerator.state.fsdp_plugin.fsdp_version
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        version = int(os.environ.get("FSDP_VERSION", "1"))
    else:
        return False
    if version != 2:
        raise UserError("Starlight's FSDP mode needs FSDP2: launch with --fsdp_version 2 (or fsdp_version: 2 in "
                        "the config file, e.g. recipes/accelerate_configs/fsdp2.yaml)")
    return True


def check_fsdp_run(fsdp: bool, config, model) -> None:
    """The settings FSDP2 mode does not support, as UserErrors (before anything is loaded)."""
    from ..batchnorm import has_batchnorm

    if not fsdp:
        return
    if config.align_overlap:
        raise UserError("align_overlap is not available in FSDP2 mode; drop --align_overlap or --use_fsdp")
    if has_batchnorm(model):
        raise UserError("FSDP2 mode does not recompute BatchNorm statistics; train this star without --use_fsdp")
    if getattr(config, "symmetry", "permutation") != "permutation":
        raise UserError("FSDP2 mode aligns with permutations only; drop --symmetry orthogonal or --use_fsdp")
    if config.anchor_device != "cpu":
        raise UserError("FSDP2 mode keeps the anchors' shards on the host: use anchor_device=cpu")


def unprepared_optimizer(optimizer):
    """``optimizer`` wrapped as Accelerate wraps it (steps only when gradients sync), but not registered with
    the Accelerator: under FSDP2 its state is this process's shard, saved by :meth:`ShardedStar.checkpoint_writer`."""
    from accelerate.optimizer import AcceleratedOptimizer

    return AcceleratedOptimizer(optimizer, device_placement=False)


def dim0_chunk(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rows [start, end) of process ``rank`` in ``torch.chunk(rows, world)`` (what ``fully_shard`` keeps)."""
    size = -(-rows // world)
    start = min(rank * size, rows)
    return start, min(start + size, rows)


class ShardLayout:
    """One process's dim-0 shard of every parameter of a :class:`~.flat.FlatLayout`, concatenated.

    Same interface as ``FlatLayout`` where the trainer uses it (``total``, ``flatten``, ``views``), plus
    ``unshard`` (every process's flat shard -> the full flat vector), ``shard`` (full flat -> one shard) and the
    two collectives on flat shards, ``gather`` and ``scatter``.
    """

    def __init__(self, layout, rank: int, world: int, device="cpu"):
        bad = [n for n, s in zip(layout.names, layout.shapes) if len(s) == 0]
        if bad:
            raise UserError(f"FSDP2 mode shards parameters along dim 0; {bad[0]!r} is a scalar")
        self.layout, self.rank, self.world = layout, rank, world
        self.device = torch.device(device)  # where collectives run (the accelerator: NCCL needs device tensors)
        self.bounds = [[dim0_chunk(s[0], r, world) for r in range(world)] for s in layout.shapes]
        self.row_numels = [s[1:].numel() for s in layout.shapes]
        self.rank_totals = [sum((b[r][1] - b[r][0]) * k for b, k in zip(self.bounds, self.row_numels))
                            for r in range(world)]
        self.total = self.rank_totals[rank]
        self.names = layout.names
        self.shapes = [torch.Size((b[rank][1] - b[rank][0], *s[1:])) for b, s in zip(self.bounds, layout.shapes)]
        self.numels = [s.numel() for s in self.shapes]

    def flatten(self, state_dict, dtype=torch.float32, device=None, rank: int | None = None) -> torch.Tensor:
        """This process's (or ``rank``'s) shard of ``state_dict``'s parameters, flat."""
        r = self.rank if rank is None else rank
        parts = [state_dict[n].reshape(s[0], -1)[b[r][0]:b[r][1]].reshape(-1)
                 for n, s, b in zip(self.names, self.layout.shapes, self.bounds)]
        return torch.cat(parts).to(device=device, dtype=dtype)

    def shard(self, full: torch.Tensor, rank: int | None = None) -> torch.Tensor:
        """The shard of ``rank`` (default: this process) of a full flat vector."""
        return self.flatten(self.layout.views(full), dtype=full.dtype, device=full.device, rank=rank)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: v.view(s) for n, v, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def unshard(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The full flat vector from every process's flat shard (rank order)."""
        per_rank = [p[:t].split([(b[r][1] - b[r][0]) * k for b, k in zip(self.bounds, self.row_numels)])
                    for r, (p, t) in enumerate(zip(parts, self.rank_totals))]
        return torch.cat([torch.cat([pieces[j] for pieces in per_rank]) for j in range(len(self.names))])

    def gather(self, local: torch.Tensor, dst: int | None = None) -> torch.Tensor | None:
        """The full flat vector on the host, on every process (``dst=None``) or on ``dst`` only (else None)."""
        import torch.distributed as dist

        if self.world == 1:
            return local.detach().cpu().clone()
        buf = _padded(local.detach(), max(self.rank_totals), self.device)
        parts = [torch.empty_like(buf) for _ in range(self.world)] if dst in (None, self.rank) else None
        if dst is None:
            dist.all_gather(parts, buf)
        else:
            dist.gather(buf, parts, dst=dst)
        return self.unshard([p.cpu() for p in parts]) if parts is not None else None

    def scatter(self, full: torch.Tensor | None, out: torch.Tensor, src: int) -> None:
        """``out`` (this process's flat shard) := its shard of ``full`` as held by process ``src``."""
        import torch.distributed as dist

        with torch.no_grad():
            if self.world == 1:
                out.copy_(full)
                return
            size = max(self.rank_totals)
            parts = ([_padded(self.shard(full, r), size, self.device) for r in range(self.world)]
                     if self.rank == src else None)
            buf = torch.empty(size, dtype=out.dtype, device=self.device)
            dist.scatter(buf, parts, src=src)
            out.copy_(buf[:self.total])


class ShardedStar:
    """The FSDP2 counterpart of :class:`~.flat.FlatBoundModel`: the model sharded with ``fully_shard``, its
    local parameter shards written from flat local shards of θ and an anchor, its gradient read back flat."""

    def __init__(self, model: nn.Module, shards: ShardLayout, accelerator):
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        self.model, self.shards, self.device = model, shards, accelerator.device
        if not dist.is_initialized():  # one process (``accelerate launch --num_processes 1``): a group of one
            dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        self.blueprint = _on_meta(model)  # the architecture, for the unsharded export
        mesh = init_device_mesh(self.device.type, (shards.world,))
        kwargs, policy = _plugin_settings(accelerator, model)
        for module in reversed(list(model.modules())[1:]):  # innermost first, as Accelerate does
            if policy is not None and not isinstance(module, (nn.ModuleList, nn.ModuleDict)) and policy(module):
                fully_shard(module, mesh=mesh, **kwargs)
        fully_shard(model, mesh=mesh, **kwargs)
        self.params = [p for _, p in model.named_parameters()]
        names = [n for n, _ in model.named_parameters()]
        got = [p.to_local().shape for p in self.params]
        if names != shards.names or got != shards.shapes:
            raise RuntimeError(f"fully_shard's local shards {got} are not the expected dim-0 chunks {shards.shapes}")

    def _locals(self) -> list[torch.Tensor]:
        return [p.to_local() for p in self.params]

    @torch.no_grad()
    def load(self, theta: torch.Tensor, anchor: torch.Tensor | None = None, t: float = 0.0) -> None:
        """Weights := θ, or ``(1-t)·θ + t·anchor`` (flat local shards), per shard."""
        local = self._locals()
        torch._foreach_copy_(local, list(self.shards.views(theta).values()))
        if anchor is not None:
            torch._foreach_lerp_(local, list(self.shards.views(anchor).values()), t)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @property
    def grads(self) -> torch.Tensor:
        """The reduce-scattered (averaged over processes) gradient of the weights, as a flat local shard."""
        return torch.cat([p.grad.to_local().reshape(-1) if p.grad is not None
                          else torch.zeros(s.numel(), device=self.device) for p, s in zip(self.params,
                                                                                          self.shards.shapes)])

    # ------------------------------------------------------------------ alignment
    def align(self, theta: torch.Tensor, anchors: torch.Tensor, spec, seed: int, max_iter: int, solver: str,
              order: str, presolve: bool | str = False) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """Weight-match every anchor to θ on full tensors (anchor i on process ``i % world``), permute it and
        re-shard it in place; returns every (row, permutation), on every process."""
        from ..matching.population import align_rows

        full_theta = self.shards.gather(theta)
        layout = self.shards.layout

        def match(i, full):
            found = align_rows(spec, layout, full_theta, full[None], [0], [seed + i], max_iter, solver, order=order,
                               presolve=presolve)
            return found.perms[0]

        return self._round_trip(anchors, range(anchors.shape[0]), spec, match)

    def permute_rows(self, anchors: torch.Tensor, perms: dict[int, dict[str, torch.Tensor]], spec) -> None:
        """Permute anchor rows (local shards) by known permutations: gathered, permuted, re-sharded."""
        self._round_trip(anchors, sorted(perms), spec, lambda i, full: perms[i])

    def _round_trip(self, anchors, indices, spec, perm_of) -> list[tuple[int, dict[str, torch.Tensor]]]:
        from accelerate.utils import gather_object

        from ..spec import apply_permutation

        s, indices, found = self.shards, list(indices), []
        layout = s.layout
        for start in range(0, len(indices), s.world):
            batch = indices[start:start + s.world]  # batch[k] is gathered on process k
            mine = permuted = None
            for k, i in enumerate(batch):
                full = self.shards.gather(anchors[i], dst=k)
                mine = (i, full) if full is not None else mine
            done = []
            if mine is not None:
                i, full = mine
                perm = perm_of(i, full)
                permuted = layout.flatten(apply_permutation(spec, perm, layout.views(full)), dtype=full.dtype)
                done = [(i, perm)]
            for k, i in enumerate(batch):
                self.shards.scatter(permuted if k == s.rank else None, anchors[i], src=k)
            found += gather_object(done) if s.world > 1 else done
        return found

    # ------------------------------------------------------------------ export and checkpoints
    def release(self, theta: torch.Tensor) -> nn.Module:
        """An ordinary (unsharded, host) model holding the gathered θ and the model's buffers."""
        full = self.shards.gather(theta)
        model = self.blueprint.to_empty(device="cpu")
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, view in self.shards.layout.views(full).items():
                params[name].copy_(view)
            for name, b in self.model.named_buffers():
                buffers[name].copy_(b)
        return model

    def checkpoint_writer(self, theta: torch.Tensor, optimizer):
        """Gather θ and the optimizer state on process 0 (a collective); returns (full θ, a function writing
        the optimizer state into a checkpoint folder) on process 0, (None, None) elsewhere."""
        from safetensors.torch import save_file

        raw = getattr(optimizer, "optimizer", optimizer)
        full_theta = self.shards.gather(theta, dst=0)
        tensors = {}
        for key, value in sorted(raw.state.get(raw.param_groups[0]["params"][0], {}).items()):
            if value is None:
                continue
            sharded = torch.is_tensor(value) and value.shape == theta.shape
            tensors[key] = self.shards.gather(value, dst=0) if sharded else torch.as_tensor(value).cpu()
        if full_theta is None:
            return None, None
        groups = [{k: v for k, v in g.items() if k != "params"} for g in raw.state_dict()["param_groups"]]

        def write(folder):
            save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, OPTIMIZER_FILE),
                      metadata={"param_groups": json.dumps(groups)})

        return full_theta, write

    def load_checkpoint(self, folder: str, state, scheduler, theta: torch.Tensor, optimizer) -> None:
        """Resume θ's shard, the optimizer state's shards and the run state from a checkpoint folder (any world
        size: the checkpoint holds full vectors)."""
        from safetensors import safe_open

        full = torch.empty(self.shards.layout.total)
        state.load(folder, scheduler, full)
        path = os.path.join(folder, OPTIMIZER_FILE)
        if not os.path.isfile(path):
            raise UserError(f"{folder} was not written in FSDP2 mode (no {OPTIMIZER_FILE}); resume it without "
                            "--use_fsdp")
        with safe_open(path, "pt") as f:
            groups = json.loads(f.metadata()["param_groups"])
            saved = {k: f.get_tensor(k) for k in f.keys()}
        with torch.no_grad():
            theta.copy_(self.shards.shard(full))
        local = {k: (self.shards.shard(v).to(theta.device) if v.numel() == full.numel() and v.dim() == 1 else v)
                 for k, v in saved.items()}
        raw = getattr(optimizer, "optimizer", optimizer)
        raw.load_state_dict({"state": {0: local} if local else {},
                             "param_groups": [{**g, "params": [i]} for i, g in enumerate(groups)]})


def _on_meta(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are on the meta device (no host copy is made)."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    memo.update({id(b): torch.empty_like(b, device="meta") for b in model.buffers()})
    return copy.deepcopy(model, memo)


def _padded(flat: torch.Tensor, size: int, device) -> torch.Tensor:
    out = torch.zeros(size, dtype=flat.dtype, device=device)
    out[:flat.numel()].copy_(flat)
    return out


def _plugin_settings(accelerator, model):
    """``fully_shard`` keyword arguments and the wrap policy of Accelerate's FSDP plugin (the launcher's)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if accelerator.distributed_type == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
    else:  # CPU: Accelerate keeps MULTI_CPU; the same plugin, read from the launcher's environment
        plugin = FullyShardedDataParallelPlugin()
    plugin.set_auto_wrap_policy(model)
    kwargs = {"reshard_after_forward": plugin.reshard_after_forward,
              "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy()}
    if plugin.cpu_offload is not None:
        kwargs["offload_policy"] = plugin.cpu_offload
    return kwargs, fsdp2_prepare_auto_wrap_policy(plugin, model)
