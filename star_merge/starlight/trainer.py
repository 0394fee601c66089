"""The Starlight training loop (Sonthalia et al., ICLR 2025) on Accelerate.

Per minibatch: one anchor n and one t, forward at ``(1-t)·θ + t·π_n(θ_n)``, the task's loss, gradient to θ
only (through the interpolation, factor 1-t). Anchors are re-aligned to θ by weight matching at the
start of every ``align_every``-th epoch (epoch 0 included; ``matching_presolve``: which are presolved). BatchNorm
runs in train mode during steps; the star's running statistics are recomputed over the training data each epoch.

θ lives in one flat parameter (:class:`FlatStar`); the architecture's parameters are views of one flat weight buffer
(:class:`FlatBoundModel`), so the interpolation is one fused ``lerp`` into that buffer, the model runs as it is, and its
whole gradient lands in one flat buffer: dL/dθ = (1-t)·grad, all-reduced across processes at each optimizer step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._faults import fault_point
from ..adapters import spec_for
from ..data import make_dataloader, set_data_epoch, without_augmentation
from ..batchnorm import has_batchnorm, reset_bn_stats
from ..errors import UserError
from ..matching.population import BackgroundAlignment, align_slice
from ..modeling import build_model
from ..rundir import RunPaths
from ..seeding import beta_from_uniform, mix_seed
from ..spec import apply_permutation, compose_permutations
from .initial import initial_state
from ..population.training import make_optimizer, make_scheduler
from .accelerator import make_accelerator
from ..matching.align import in_symmetry_form
from .anchors import anchors_config, folded_norm_positions, in_star_form, normalize_anchors, population_dtype
from .checkpoint import StarlightState
from .config import StarlightConfig
from .flat import FlatBoundModel, FlatLayout, FlatStar
from .fsdp import ShardedStar, ShardLayout, check_fsdp_run, fsdp_requested, unprepared_optimizer
from .outputs import StarOutputs
from .rotation import resume_with_fallback, save_checkpoint_state

logger = logging.getLogger(__name__)

__all__ = ["StarlightTrainer", "StarlightResult", "StarlightState"]


@dataclass
class StarlightResult:
    """The trained star (model in eval mode) and the permutations aligning each anchor to it."""

    model: nn.Module
    perms: dict[str, dict[str, torch.Tensor]]
    history: list[dict] = field(default_factory=list)


class StarlightTrainer(StarOutputs):
    """Learn a star model linearly connected to every anchor (Trainer-shaped: ``train()``, ``save_model()``,
    ``push_to_hub()``).

    ``model``: the star's initial architecture — a ``PreTrainedModel`` (its weights are the random init unless
    ``args.init`` says otherwise), a config (built with ``args.seed``) or ``None`` (built from the anchors'
    config with ``args.seed``). ``anchors``: checkpoint folders / Hub ids / population files, PreTrainedModels,
    ``(name, state_dict)`` or ``(name, zero-argument loader)`` pairs, all of one architecture (see
    :mod:`.anchors`). ``train_dataset``: a model-ready split (model inputs + ``labels``); ``eval_dataset`` is
    kept for evaluation; ``processing_class`` (tokenizer / processor) is saved with the star. ``task``: the
    :class:`~star_merge.tasks.Task` (default: from the star's architecture); ``data_collator`` defaults to the
    task's.
    """

    def __init__(
        self,
        model=None,
        args: StarlightConfig | None = None,
        anchors: Sequence[Any] = (),
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        data_collator=None,
        task=None,
        accelerator=None,
    ):
        from ..tasks import task_for

        if args is None:
            args = StarlightConfig()
        if not isinstance(args, StarlightConfig):
            raise TypeError(f"args must be a StarlightConfig, got {type(args).__name__}")
        sources = normalize_anchors(anchors)
        if len(sources) < 1:
            raise UserError("Starlight needs at least one anchor model")
        if train_dataset is None:
            raise UserError("StarlightTrainer needs a train_dataset (model inputs + labels)")
        self.args = args
        self.anchor_names = [s.name for s in sources]
        self.train_dataset, self.eval_dataset, self.processing_class = train_dataset, eval_dataset, processing_class
        self.accelerator = accelerator if accelerator is not None else self.make_accelerator(args)
        self.fsdp = fsdp_requested(self.accelerator)  # FSDP2 mode (fsdp.py): θ, anchors, optimizer sharded
        self._unfolded = self._star_model(model, sources)  # symmetry "orthogonal": star and anchors folded
        self.model = in_symmetry_form(self._unfolded, args.symmetry)
        self.task = task if task is not None else task_for(self.model)
        self.data_collator = data_collator if data_collator is not None else self.task.collator
        self.spec = spec_for(self.model, symmetry=args.symmetry)
        self.layout = FlatLayout.of(self.model)
        acc = self.accelerator  # rows: the layout of θ and of the anchor rows (FSDP2: this process's shards)
        self.rows = ShardLayout(self.layout, acc.process_index, acc.num_processes, acc.device) if self.fsdp else self.layout
        check_fsdp_run(self.fsdp, args, self.model)
        # Matching uses the parameters only (BN running statistics are recomputed, not matched).
        self.match_spec = self.spec.subset(set(self.layout.names))
        self.anchors = self._anchor_matrix(sources)
        self._init_star()
        # Run state, filled by _setup() (nothing is created later, so every method sees the same attributes).
        self.state, self._pending = StarlightState(), None
        self.flat_star, self.bound = None, None  # FlatStar, FlatBoundModel
        self.optimizer = self.scheduler = self.train_loader = self.bn_loader = None
        self.steps_per_epoch, self.has_bn = 0, has_batchnorm(self.model)
        self._ones = folded_norm_positions(self._unfolded, self.model, self.layout)  # stay 1 in folded form
        self.result: StarlightResult | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def make_accelerator(config: StarlightConfig):
        return make_accelerator(config)

    def _star_model(self, model, sources):
        if isinstance(model, nn.Module):
            return model
        config = model if model is not None else anchors_config(sources)
        if config is None:
            raise UserError(
                "cannot tell the star's architecture: pass model= (a PreTrainedModel or its config) when the "
                "anchors are bare (name, state_dict) pairs"
            )
        return build_model(config, seed=self.args.seed)

    def _anchor_matrix(self, sources) -> torch.Tensor:
        """The anchors in ONE [N, P] matrix of the population's dtype (bf16/fp16 kept, mixed: float32), in the star's
        current frame; re-alignment permutes rows in place (``state.perms``): one copy per anchor in host memory."""
        device = self.accelerator.device
        on_device = device.type != "cpu" and self.args.anchor_device == "accelerator"
        first = sources[0].load() if sources else {}
        matrix = torch.empty(len(sources), self.rows.total, device=device if on_device else "cpu",
                             dtype=population_dtype(first, self.layout.names),
                             pin_memory=device.type == "cuda" and not on_device)
        for i, src in enumerate(sources):
            sd = in_star_form(self._unfolded, self.model, first if i == 0 else src.load())  # one at a time
            matrix = matrix if population_dtype(sd, self.layout.names) == matrix.dtype else matrix.float()  # mixed
            try:
                self.spec.subset(sd.keys()).validate(sd)
            except ValueError as e:
                raise UserError(f"anchor {src.name}: {e}") from None
            missing = set(self.layout.names) - set(sd)
            if missing:
                raise UserError(f"anchor {src.name} lacks parameter {sorted(missing)[0]!r}; is it the same architecture?")
            matrix[i].copy_(self.rows.flatten(sd, dtype=matrix.dtype))
        return matrix

    def _init_star(self) -> None:
        rows = lambda: [self.layout.views((self.rows.gather(a) if self.fsdp else a).cpu()) for a in self.anchors]  # noqa: E731
        sd = initial_state(self.args.init, rows, self.match_spec, self.args.seed)
        if sd is not None:  # anchors and merges hold the flat layout's tensors; a checkpoint folder holds all
            self.model.load_state_dict(sd, strict=not self.args.init.startswith(("anchor", "merge")))

    # ------------------------------------------------------------------ pieces of a step
    def sample_anchor_and_t(self, epoch: int, batch: int, rank: int) -> tuple[int, float]:
        """One anchor index and one t per minibatch, a pure function of (seed, epoch, batch, rank)."""
        g = torch.Generator().manual_seed(mix_seed(self.args.seed, epoch, batch, rank))
        n = int(torch.randint(len(self.anchors), (1,), generator=g))
        c = self.args
        if c.t_sampling == "uniform":
            t = float(torch.rand((), generator=g))
        elif c.t_sampling == "beta":
            # Beta(a, a) by inverting its CDF at a uniform from the seeded generator.
            t = beta_from_uniform(float(torch.rand((), generator=g)), c.t_beta)
        else:
            t = c.t_constant
        return n, t

    def _align_rows(self, theta: torch.Tensor):  # [(row, permutation)] of this process's slice, where θ lives
        a, acc = self.args, self.accelerator
        return align_slice(self.match_spec, self.layout, theta.detach(), self.anchors, acc.process_index,
                           acc.num_processes, a.seed, a.matching_max_iter, a.matching_solver, a.matching_order,
                           presolve=a.presolve_at(first=not self.state.perms))  # first: rows in their own frames

    def align_anchors(self, theta: torch.Tensor, state: StarlightState, progress: bool, found=None) -> None:
        """Weight-match every anchor to θ (a slice per process, exchanged); apply, compose into ``state.perms``.
        Rows are in the last alignment's frame (a warm start); ``found``: an ``_align_rows`` result (overlap)."""
        from accelerate.utils import gather_object

        a, acc = self.args, self.accelerator
        if self.fsdp:  # owners gather, align and re-shard their anchors (rows permuted there)
            gathered = self.bound.align(theta, self.anchors, self.match_spec, a.seed, a.matching_max_iter,
                                        a.matching_solver, a.matching_order)
        else:
            mine = found if found is not None else self._align_rows(theta)
            gathered = gather_object(mine) if acc.num_processes > 1 else mine
        for i, delta in gathered:
            name = self.anchor_names[i]
            if not self.fsdp:
                self.permute_row(i, delta)
            state.perms[name] = compose_permutations(delta, state.perms[name]) if name in state.perms else delta

    def permute_rows(self, perms: dict[int, dict[str, torch.Tensor]]) -> None:
        """Permute anchor rows in place (FSDP2: each gathered on one process, permuted and re-sharded)."""
        if self.fsdp:
            return self.bound.permute_rows(self.anchors, perms, self.match_spec)
        for i, perm in perms.items():
            self.permute_row(i, perm)

    @torch.no_grad()
    def permute_row(self, i: int, perm: dict[str, torch.Tensor]) -> None:
        """Permute anchor row ``i`` in place, where it lives (through one transient copy of the row)."""
        if all(v.ndim == 1 and torch.equal(v, torch.arange(v.numel())) for v in perm.values()):
            return
        row = self.anchors[i]
        permuted = apply_permutation(self.match_spec, perm, self.layout.views(row))
        row.copy_(self.layout.flatten(permuted, device=row.device))

    # ------------------------------------------------------------------ the loop
    def train(self) -> StarlightResult:
        """Train the star; returns (and keeps in ``self.result``) the star and the anchors' final permutations."""
        self._setup()
        self._resume()
        bar = tqdm(total=self.steps_per_epoch * self.args.num_train_epochs, initial=self.state.global_step,
                   desc="starlight", disable=not self.accelerator.is_local_main_process)
        for epoch in range(self.state.epoch, self.args.num_train_epochs):
            running, count = self._train_epoch(epoch, bar)
            self._end_of_epoch(epoch, running, count)
        bar.close()
        self.result = self._finish()
        return self.result

    def _setup(self) -> None:
        c, acc = self.args, self.accelerator
        device = acc.device
        self.flat_star = FlatStar(self.rows.flatten(self.model.state_dict()).to(device))
        self.bound = (ShardedStar(self.model, self.rows, acc) if self.fsdp
                      else FlatBoundModel(self.model.to(device), self.layout, device))
        optimizer = make_optimizer([self.flat_star.theta], c.optimizer, c.learning_rate, c.weight_decay)
        train_loader = make_dataloader(self.train_dataset, c.per_device_train_batch_size, shuffle=True, seed=c.seed,
                                       collate_fn=self.data_collator)
        if self.fsdp:  # θ is no model parameter: the optimizer is wrapped, not prepared (fsdp.py saves its state)
            self.optimizer, self.train_loader = unprepared_optimizer(optimizer), acc.prepare(train_loader)
        else:
            self.optimizer, self.train_loader = acc.prepare(optimizer, train_loader)
        self.steps_per_epoch = math.ceil(len(self.train_loader) / c.gradient_accumulation_steps)
        raw_opt = getattr(self.optimizer, "optimizer", self.optimizer)
        self.scheduler = make_scheduler(raw_opt, c.lr_scheduler_type, self.steps_per_epoch * c.num_train_epochs)
        self.state = StarlightState()
        self.bn_loader = (make_dataloader(without_augmentation(self.train_dataset), c.per_device_eval_batch_size,
                                          collate_fn=self.data_collator) if self.has_bn else None)
        if c.trackers():
            acc.init_trackers("starlight", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                   for k, v in c.to_dict().items()})

    def _resume(self) -> None:
        c, acc = self.args, self.accelerator
        if not c.resume_from_checkpoint:
            return
        def load(path):  # noqa: E306
            acc.load_state(path)
            if self.fsdp:  # the checkpoint holds full vectors: this process takes its shards
                self.bound.load_checkpoint(path, self.state, self.scheduler, self.flat_star.theta, self.optimizer)
            else:
                self.state.load(path, self.scheduler, self.flat_star.theta)
        # rotation.py: torn checkpoints set aside, a corrupt one falls back to the previous one, `latest`
        # with no checkpoint yet starts from the beginning (where that run was).
        path = resume_with_fallback(acc, RunPaths(c.output_dir).checkpoints_path, c.resume_from_checkpoint, load,
                                    reset=self.state.__init__)
        if path is None:
            return
        acc.print(f"resumed from {path} at epoch {self.state.epoch}, step {self.state.global_step}")
        if self.has_bn:
            self._load_theta_into_model()
        # rows are in the original frames until now
        self.permute_rows({i: self.state.perms[n] for i, n in enumerate(self.anchor_names) if n in self.state.perms})

    def _train_epoch(self, epoch: int, bar) -> tuple[float, int]:
        """Align (when due), then one pass over the training data; returns (summed loss, micro-batches)."""
        c, acc, state = self.args, self.accelerator, self.state
        align_due = c.align_every > 0 and epoch % c.align_every == 0
        started = time.perf_counter()
        if state.batches_in_epoch == 0 and align_due and state.aligned_epoch != epoch:
            overlap = c.align_overlap and acc.num_processes == 1 and state.aligned_epoch >= 0
            if self._pending is not None:  # align_overlap: apply the alignment to the previous epoch's θ
                self.align_anchors(self.flat_star.theta, state, False, found=self._pending.result())
            later = overlap and epoch + c.align_every < c.num_train_epochs  # a later epoch would apply it
            self._pending = BackgroundAlignment(self._align_rows, self.flat_star.theta) if later else None
            if not overlap:
                self.align_anchors(self.flat_star.theta, state, acc.is_local_main_process)
            state.aligned_epoch = epoch
        self.align_seconds = time.perf_counter() - started  # logged per epoch (trackers), never in the history
        self.train_loader.set_epoch(epoch)
        set_data_epoch(self.train_dataset, epoch, self.data_collator)  # seeded augmentation, MLM masking
        loader = (acc.skip_first_batches(self.train_loader, state.batches_in_epoch) if state.batches_in_epoch
                  else self.train_loader)
        self.model.train()
        running, count = 0.0, 0
        for batch in loader:
            loss = self._step(epoch, batch)
            state.batches_in_epoch += 1
            running += float(loss.detach())
            count += 1
            if acc.sync_gradients:
                state.global_step += 1
                fault_point("starlight")
                bar.update(1)
                if state.global_step % c.logging_steps == 0:
                    acc.log({"train/loss": running / count, "train/lr": self.scheduler.get_last_lr()[0],
                             "train/epoch": epoch}, step=state.global_step)
                    bar.set_postfix(loss=f"{running / count:.4f}", epoch=epoch)
                if c.checkpointing_steps and state.global_step % c.checkpointing_steps == 0:
                    self._save_state()
        return running, count

    def _step(self, epoch: int, batch) -> torch.Tensor:
        """One micro-batch: loss at ``(1-t)·θ + t·π_n(θ_n)``, θ's gradient (1-t)·∇, optimizer step when due."""
        c, acc = self.args, self.accelerator
        theta, bound, task = self.flat_star.theta, self.bound, self.task
        # FSDP2: one (n, t) for all processes (rank 0's draw), each with its own data
        n, t = self.sample_anchor_and_t(epoch, self.state.batches_in_epoch, 0 if self.fsdp else acc.process_index)
        with acc.accumulate():
            anchor = self.anchors[n].to(acc.device, non_blocking=True).to(theta.dtype)  # training precision
            bound.load(theta, anchor, t)  # weights := (1-t)·θ + t·π_n(θ_n)
            bound.zero_grad()
            with acc.autocast():
                loss = task.loss(self.model, batch)
            acc.backward(loss)
            grad = bound.grads.mul(1.0 - t)  # through the interpolation
            if c.star_ce_weight > 0:  # "star + CE": μ·CE(f(θ))
                bound.load(theta)
                bound.zero_grad()
                with acc.autocast():
                    star_loss = c.star_ce_weight * task.loss(self.model, batch)
                acc.backward(star_loss)
                grad += bound.grads
                loss = loss + star_loss
            theta.grad = grad if theta.grad is None else theta.grad.add_(grad)
            if acc.sync_gradients and acc.num_processes > 1 and not self.fsdp:  # FSDP2 reduce-scattered it
                torch.distributed.all_reduce(theta.grad)
                theta.grad.div_(acc.num_processes)
            self.optimizer.step()
            theta.data.index_fill_(0, self._ones.to(theta.device), 1.0)  # folded form: norm weights stay 1
            if acc.sync_gradients:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _end_of_epoch(self, epoch: int, running: float, count: int) -> None:
        """The star's own BatchNorm statistics, recomputed over the training data; history; checkpoint."""
        if self.has_bn:
            self._load_theta_into_model()
            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, self.accelerator.device, task=self.task)
        self.state.history.append({"epoch": epoch, "train_loss": running / max(count, 1)})
        self.accelerator.log({"epoch/train_loss": running / max(count, 1), "epoch/align_seconds": self.align_seconds,
                              "epoch/epoch": epoch}, step=self.state.global_step)
        self.state.epoch, self.state.batches_in_epoch = epoch + 1, 0
        self._save_state()

    def _finish(self) -> StarlightResult:
        """Final alignment of every anchor to the trained star (for BMA export and evaluation)."""
        acc = self.accelerator
        self.align_anchors(self.flat_star.theta, self.state, acc.is_local_main_process)
        self._load_theta_into_model()
        if self.has_bn:
            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, acc.device, task=self.task)
        if self.args.trackers():
            acc.end_training()
        star = self.bound.release(self.flat_star.theta).to("cpu").eval()
        return StarlightResult(model=star, perms={k: dict(v) for k, v in self.state.perms.items()},
                               history=self.state.history)

    # ------------------------------------------------------------------ helpers
    def _load_theta_into_model(self) -> None:
        self.bound.load(self.flat_star.theta.detach())

    def _save_state(self) -> None:
        if self.args.output_dir is None:
            return
        theta, write = self.flat_star.theta, None
        if self.fsdp:  # gathered on process 0 (a collective): checkpoints hold full vectors
            theta, write = self.bound.checkpoint_writer(theta, self.optimizer)
        save_checkpoint_state(self.accelerator, RunPaths(self.args.output_dir).checkpoints_path,
                              self.args.checkpoints_total_limit,
                              lambda folder: (self.state.save(folder, self.scheduler, theta), write and write(folder)))
