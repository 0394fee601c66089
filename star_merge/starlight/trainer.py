"""The Starlight training loop (Sonthalia et al., ICLR 2025) on Accelerate.

Per minibatch: one anchor n and one t, forward at ``(1-t)·θ + t·π_n(θ_n)``, the task's loss, gradient to θ
only (through the interpolation, factor 1-t). Anchors are re-aligned to θ by weight matching at the
start of every ``align_every``-th epoch (epoch 0 included; ``matching_presolve``: which are presolved). BatchNorm
runs in train mode during steps; the star's running statistics are recomputed over the training data each epoch.

θ lives in one flat parameter (:class:`FlatStar`); the architecture's parameters are views of one flat
weight buffer (:class:`FlatBoundModel`), so the interpolation is one fused ``lerp`` into that buffer, the
model runs as it is, and its whole gradient lands in one flat buffer: dL/dθ = (1-t)·grad. Processes
all-reduce θ's gradient at each optimizer step (the only gradient there is), at once or overlapped with the
backward (:mod:`.reduction`); with several processes each holds only its share of the anchors (:mod:`.distributed`).
``matching_presolve`` picks which re-alignments are presolved.
"""

from __future__ import annotations

import collections.abc
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
from ..modeling import build_model
from ..rundir import RunPaths
from ..seeding import beta_from_uniform, mix_seed
from .initial import initial_state
from ..population.training import make_optimizer, make_scheduler
from .accelerator import make_accelerator
from ..matching.align import in_symmetry_form
from .alignment import AnchorAlignment
from .anchors import anchors_config, folded_norm_positions, in_star_form, normalize_anchors
from .checkpoint import StarlightState
from .config import StarlightConfig
from .distributed import AnchorStore, load_anchor_store, sharding_enabled
from .reduction import GradientReducer, Preempted, StopRequest
from .schedule import AlignSchedule
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


class StarlightTrainer(AnchorAlignment, StarOutputs):
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
        self.match_spec = self.spec.subset(set(self.layout.names))  # parameters only (BN statistics: recomputed)
        # anchor sharding (distributed.py) is data parallelism's; FSDP2 shards every anchor like θ instead
        self.store: AnchorStore = load_anchor_store(
            sources, self.layout, self.spec, acc.device, args.anchor_device, acc.process_index, acc.num_processes,
            not self.fsdp and sharding_enabled(args.anchor_sharding, acc.num_processes), self._in_star_form, self.rows)
        self._init_star(sources)
        # Run state, filled by _setup() (nothing is created later, so every method sees the same attributes).
        self.state, self._pending = StarlightState(), None
        self.schedule = AlignSchedule(args.align_schedule, len(sources), args.align_every)
        self.reducer: GradientReducer | None = None
        self._stop, self._epoch_align = StopRequest(), {}
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

    def _in_star_form(self, sd):
        return in_star_form(self._unfolded, self.model, sd)

    @property
    def anchors(self) -> torch.Tensor:
        """The anchor rows this process holds (``[N, P]``; sharded: its share, anchor ``rank + j·world`` in row j)."""
        return self.store.rows

    def _init_star(self, sources) -> None:
        sd = initial_state(self.args.init, lambda: _StarFrameAnchors(self, sources), self.match_spec, self.args.seed)
        if sd is not None:  # anchors and merges hold the flat layout's tensors; a checkpoint folder holds all
            self.model.load_state_dict(sd, strict=not self.args.init.startswith(("anchor", "merge")))

    # ------------------------------------------------------------------ pieces of a step
    def sample_anchor_and_t(self, epoch: int, batch: int, rank: int) -> tuple[int, float]:
        """One anchor index and one t per minibatch, a pure function of (seed, epoch, batch, rank)."""
        g = torch.Generator().manual_seed(mix_seed(self.args.seed, epoch, batch, rank))
        n = int(torch.randint(self.store.num_anchors, (1,), generator=g))
        c = self.args
        if c.t_sampling == "uniform":
            t = float(torch.rand((), generator=g))
        elif c.t_sampling == "beta":
            # Beta(a, a) by inverting its CDF at a uniform from the seeded generator.
            t = beta_from_uniform(float(torch.rand((), generator=g)), c.t_beta)
        else:
            t = c.t_constant
        return n, t

    # ------------------------------------------------------------------ the loop
    def train(self, *, end_trackers: bool = True) -> StarlightResult:
        """Train the star; returns (and keeps in ``self.result``) the star and the anchors' final permutations.
        ``end_trackers=False`` leaves the trackers open for the caller (the pipeline logs the evaluation, then
        calls ``accelerator.end_training()``)."""
        self._setup()
        self._resume()
        bar = tqdm(total=self.steps_per_epoch * self.args.num_train_epochs, initial=self.state.global_step,
                   desc="starlight", disable=not self.accelerator.is_local_main_process)
        with self._stop:  # SIGTERM: checkpoint, exit 143
            for epoch in range(self.state.epoch, self.args.num_train_epochs):
                running, count = self._train_epoch(epoch, bar)
                self._end_of_epoch(epoch, running, count)
        bar.close()
        self.result = self._finish(end_trackers)
        return self.result

    def _setup(self) -> None:
        c, acc = self.args, self.accelerator
        device = acc.device
        self.flat_star = FlatStar(self.rows.flatten(self.model.state_dict()).to(device))
        self.bound = (ShardedStar(self.model, self.rows, acc) if self.fsdp
                      else FlatBoundModel(self.model.to(device), self.layout, device))
        # FSDP2 reduce-scatters the gradient itself: nothing left to reduce here
        self.reducer = GradientReducer(self.model, self.layout, None if self.fsdp else self.bound.grads,
                                       1 if self.fsdp else acc.num_processes,
                                       c.reduce_overlap, bucket_numel=int(c.reduce_bucket_mb * 2**20) // 4)
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
            if not self.fsdp:  # FSDP2 checkpoints hold full vectors: any number of processes resumes them
                self.state.check_processes(path, acc.num_processes)  # before anything is loaded
            acc.load_state(path)
            if self.fsdp:  # the checkpoint holds full vectors: this process takes its shards
                self.bound.load_checkpoint(path, self.state, self.scheduler, self.flat_star.theta, self.optimizer)
            else:
                self.state.load(path, self.scheduler, self.flat_star.theta)
            self.schedule.load_state_dict(self.state.schedule)
        # rotation.py: torn checkpoints set aside, a corrupt one falls back to the previous one, `latest`
        # with no checkpoint yet starts from the beginning (where that run was).
        path = resume_with_fallback(acc, RunPaths(c.output_dir).checkpoints_path, c.resume_from_checkpoint, load,
                                    reset=self.state.__init__)
        if path is None:
            return
        acc.print(f"resumed from {path} at epoch {self.state.epoch}, step {self.state.global_step}")
        if self.has_bn:
            self._load_theta_into_model()
        # rows (held here) are in the original frames until now
        self.permute_rows({i: self.state.perms[n] for i, n in enumerate(self.anchor_names)
                           if n in self.state.perms and self.store.owns(i)})

    def _train_epoch(self, epoch: int, bar) -> tuple[float, int]:
        """Align (when due), then one pass over the training data; returns (summed loss, micro-batches).
        After a SIGTERM (any process): a checkpoint at the next optimizer step, then exit 143."""
        c, acc, state = self.args, self.accelerator, self.state
        if state.batches_in_epoch == 0 and self.schedule.epoch_due(epoch) and state.aligned_epoch != epoch:
            self._align_at_epoch_start(epoch)
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
                stop = self._stop.requested(acc.num_processes, acc.device)
                if stop or (c.checkpointing_steps and state.global_step % c.checkpointing_steps == 0):
                    self._save_state()
                if stop:
                    acc.print(f"SIGTERM: checkpoint saved at epoch {epoch}, step {state.global_step}; exiting (143)")
                    raise Preempted()
        return running, count

    def _step(self, epoch: int, batch) -> torch.Tensor:
        """One micro-batch: loss at ``(1-t)·θ + t·π_n(θ_n)``, θ's gradient (1-t)·∇, optimizer step when due.
        Every process's (n, t) is drawn here (the owners of sharded anchors send the rows drawn); FSDP2: one
        (n, t) for all processes (rank 0's draw), each with its own data."""
        c, acc = self.args, self.accelerator
        theta, bound, task = self.flat_star.theta, self.bound, self.task
        draws = [self.sample_anchor_and_t(epoch, self.state.batches_in_epoch, 0 if self.fsdp else k)
                 for k in range(acc.num_processes)]
        t = draws[acc.process_index][1]
        with acc.accumulate():
            sync, last = acc.sync_gradients, c.star_ce_weight <= 0
            anchor = self.store.rows_for([n for n, _ in draws]).to(theta.dtype)  # training precision
            bound.load(theta, anchor, t)  # weights := (1-t)·θ + t·π_n(θ_n)
            loss = self._backward(lambda: task.loss(self.model, batch), 1.0 - t, sync and last)  # through the lerp
            if not last:  # "star + CE": μ·CE(f(θ))
                bound.load(theta)
                loss = loss + self._backward(lambda: c.star_ce_weight * task.loss(self.model, batch), 1.0, sync)
            if sync:
                self.reducer.reduce(theta.grad)
            self.optimizer.step()
            theta.data.index_fill_(0, self._ones.to(theta.device), 1.0)  # folded form: norm weights stay 1
            if sync:
                self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _backward(self, loss_fn, scale: float, reduce_now: bool) -> torch.Tensor:
        """θ.grad += scale·∇ of ``loss_fn()`` at the bound weights (``reduce_now``: the reducer's overlapped pass)."""
        theta, bound, acc = self.flat_star.theta, self.bound, self.accelerator
        if theta.grad is None:
            theta.grad = torch.zeros_like(theta)
        bound.zero_grad()
        overlapped = self.reducer.overlapping(reduce_now)
        if overlapped:
            self.reducer.arm(theta.grad, scale, theta.grad)
        with acc.autocast():
            loss = loss_fn()
        acc.backward(loss)
        if not overlapped:
            theta.grad.add_(bound.grads, alpha=scale)
        return loss

    def _end_of_epoch(self, epoch: int, running: float, count: int) -> None:
        """The star's own BatchNorm statistics, recomputed over the training data; history; checkpoint."""
        if self.has_bn:
            self._load_theta_into_model()
            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, self.accelerator.device,
                           task=self.task)
        self.state.history.append({"epoch": epoch, "train_loss": running / max(count, 1), **self._epoch_align})
        self.accelerator.log({"epoch/train_loss": running / max(count, 1),
                              "epoch/align_seconds": self._epoch_align.get("align_seconds", 0.0),
                              "epoch/epoch": epoch}, step=self.state.global_step)
        self._epoch_align = {}
        self.state.epoch = epoch + 1
        self.state.batches_in_epoch = 0
        self._save_state()

    def _finish(self, end_trackers: bool = True) -> StarlightResult:
        """Final alignment of every anchor to the trained star (for BMA export and evaluation)."""
        acc = self.accelerator
        self.align_anchors(self.flat_star.theta, self.state, acc.is_local_main_process)
        self._load_theta_into_model()
        if self.has_bn:
            reset_bn_stats(self.model, self.bn_loader, self.args.bn_reset_batches, acc.device, task=self.task)
        if self.args.trackers() and end_trackers:
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
        world, schedule = self.accelerator.num_processes, self.schedule.state_dict()
        save_checkpoint_state(self.accelerator, RunPaths(self.args.output_dir).checkpoints_path,
                              self.args.checkpoints_total_limit,
                              lambda folder: (self.state.save(folder, self.scheduler, theta, world, schedule),
                                              write and write(folder)))


class _StarFrameAnchors(collections.abc.Sequence):
    """Every anchor's weights in the star's frame, read when indexed: the rows this process holds (FSDP2: gathered,
    the same order on every process), the others (anchor sharding) loaded from their source."""

    def __init__(self, trainer: StarlightTrainer, sources):
        self.trainer, self.sources = trainer, sources

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if not 0 <= k < len(self.sources):
            raise IndexError(k)
        t = self.trainer
        if t.store.owns(k):
            row = t.store.row(k)
            row = t.rows.gather(row) if t.fsdp else row
        else:
            row = t.layout.flatten(t._in_star_form(self.sources[k].load()), dtype=t.anchors.dtype)
        return t.layout.views(row.cpu())
