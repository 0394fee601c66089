"""The Starlight training loop (Sonthalia et al., ICLR 2025) on Accelerate.

Per minibatch: one anchor n and one t, forward at ``(1-t)·θ + t·π_n(θ_n)``, cross-entropy, gradient to θ
only (through the interpolation, factor 1-t). Anchors are re-aligned to θ by weight matching at the
start of every ``align_every``-th epoch (epoch 0 included). BatchNorm runs in train mode during steps and
the star's running statistics are recomputed over the training data after each epoch.

θ lives in one flat parameter (:class:`FlatStar`); the architecture's parameters are views of one flat
weight buffer (:class:`FlatBoundModel`), so the interpolation is one fused ``lerp`` into that buffer, the
model runs as it is, and its whole gradient lands in one flat buffer: dL/dθ = (1-t)·grad. Processes
all-reduce θ's gradient at each optimizer step (the only gradient there is).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .._faults import fault_point
from ..adapters import spec_for
from ..connectivity import has_batchnorm, reset_bn_stats
from ..data import make_dataloader
from ..matching import weight_matching
from ..spec import apply_permutation, compose_permutations
from ..training import build_model, make_optimizer, make_scheduler
from .config import StarlightConfig
from .flat import FlatBoundModel, FlatLayout, FlatStar
from .rotation import STATE_FILE, find_latest_checkpoint, resume_with_fallback, save_checkpoint_state

logger = logging.getLogger(__name__)

__all__ = ["StarlightTrainer", "StarlightResult", "StarlightState", "find_latest_checkpoint"]


class StarlightState:
    """Progress and anchor alignments of a run, saved beside Accelerate's state in every checkpoint.

    JSON + safetensors (θ, anchor permutations, position, LR scheduler); Accelerate's files beside it
    (optimizer, sampler, RNG states) are read back by ``load_state`` with ``torch.load(weights_only=True)``.
    """

    JSON_NAME = STATE_FILE
    PERMS_NAME = "starlight_permutations.safetensors"
    THETA_NAME = "starlight_theta.safetensors"

    def __init__(self):
        self.epoch = 0  # epochs completed
        self.batches_in_epoch = 0  # micro-batches of the current epoch already consumed
        self.global_step = 0  # optimizer steps
        self.aligned_epoch = -1  # the epoch whose start alignment is in ``perms``
        self.perms: dict[str, dict[str, torch.Tensor]] = {}
        self.history: list[dict] = []

    def save(self, folder: str, scheduler, theta: torch.Tensor) -> None:
        from safetensors.torch import save_file

        from ..rundir import atomic_write_json, save_permutations

        save_file({"theta": theta.detach().contiguous().cpu()}, os.path.join(folder, self.THETA_NAME))
        save_permutations(os.path.join(folder, self.PERMS_NAME), self.perms)
        sched = {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}
        atomic_write_json(os.path.join(folder, self.JSON_NAME), {
            "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "global_step": self.global_step,
            "aligned_epoch": self.aligned_epoch, "history": self.history, "scheduler": sched,
        })

    def load(self, folder: str, scheduler, theta: torch.Tensor) -> None:
        import json

        from safetensors.torch import load_file

        from ..rundir import load_permutations

        path = os.path.join(folder, self.JSON_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder} is not a complete Starlight checkpoint (no {self.JSON_NAME})")
        with open(path) as f:
            d = json.load(f)
        self.epoch, self.batches_in_epoch = int(d["epoch"]), int(d["batches_in_epoch"])
        self.global_step, self.aligned_epoch = int(d["global_step"]), int(d["aligned_epoch"])
        self.history = list(d["history"])
        perms_path = os.path.join(folder, self.PERMS_NAME)
        self.perms = load_permutations(perms_path) if os.path.isfile(perms_path) else {}
        scheduler.load_state_dict({**scheduler.state_dict(), **d["scheduler"]})
        saved = load_file(os.path.join(folder, self.THETA_NAME))["theta"]
        if saved.shape != theta.shape:
            raise ValueError(f"{folder} holds a star of {saved.numel()} parameters, this model has {theta.numel()}")
        with torch.no_grad():
            theta.copy_(saved)


@dataclass
class StarlightResult:
    """The trained star (model in eval mode) and the permutations aligning each anchor to it."""

    model: nn.Module
    perms: dict[str, dict[str, torch.Tensor]]
    history: list[dict] = field(default_factory=list)


def _mix_seed(*parts: int) -> int:
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h * 6364136223846793005 + int(p) + 1442695040888963407) % (2**63)
    return h


class StarlightTrainer:
    """Learn a star model linearly connected to every anchor.

    ``anchors``: (name, state dict) pairs of one architecture (``model_config``) — or (name, callable returning
    the state dict), loaded one at a time; ``dataset``: a DatasetDict whose ``train`` split has the model
    input column and ``labels``.
    """

    def __init__(
        self,
        config: StarlightConfig,
        model_config,
        anchors: Sequence[tuple[str, Mapping[str, torch.Tensor]]],
        dataset,
        accelerator=None,
    ):
        if len(anchors) < 1:
            raise ValueError("Starlight needs at least one anchor model")
        self.config = config
        self.model_config = model_config
        self.anchor_names = [n for n, _ in anchors]
        self.dataset = dataset
        self.accelerator = accelerator if accelerator is not None else self.make_accelerator(config)
        self.model = build_model(model_config, seed=config.seed)
        self.spec = spec_for(self.model)
        self.layout = FlatLayout.of(self.model)
        names = set(self.layout.names)
        self.match_spec = self.spec.subset(names)  # parameters only (BN statistics are recomputed, not matched)
        # The anchors live in ONE [N, P] float32 matrix, always in the star's current frame: re-alignment
        # permutes rows in place and composes the permutation into ``state.perms`` (the permutation from
        # each original anchor), so host memory holds one copy per anchor and no more.
        device = self.accelerator.device
        on_device = device.type != "cpu" and config.anchor_device == "accelerator"
        self.anchors = torch.empty(len(anchors), self.layout.total, device=device if on_device else "cpu",
                                   pin_memory=device.type == "cuda" and not on_device)
        for row, (name, sd) in zip(self.anchors, anchors):
            if callable(sd):  # loaded on demand, so a caller need not hold all N state dicts at once
                sd = sd()
            try:
                self.spec.subset(sd.keys()).validate(sd)
            except ValueError as e:
                raise ValueError(f"anchor {name}: {e}") from None
            missing = names - set(sd)
            if missing:
                raise ValueError(f"anchor {name} lacks parameter {sorted(missing)[0]!r}; is it the same architecture?")
            row.copy_(self.layout.flatten(sd))
        self._init_star()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def make_accelerator(config: StarlightConfig):
        from accelerate import Accelerator
        from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration

        project = ProjectConfiguration(
            project_dir=config.output_dir,
            logging_dir=os.path.join(config.output_dir, "logs") if config.output_dir else None,
            automatic_checkpoint_naming=False,  # numbering and rotation: rotation.py (never drops the last good one)
        )
        log_with = None if config.report_to == "none" else config.report_to
        # On a machine without an accelerator, cpu=True lets torchrun / `accelerate launch --multi_gpu`
        # processes form one gloo group (MULTI_CPU); without it each process would train alone.
        return Accelerator(
            cpu=not _has_accelerator(),
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            mixed_precision=config.mixed_precision,
            log_with=log_with,
            project_config=project,
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        )

    def _init_star(self) -> None:
        init = self.config.init
        if init == "random":
            return
        if init == "anchor" or init.startswith("anchor:"):
            k = int(init.split(":", 1)[1]) if ":" in init else 0
            if not 0 <= k < len(self.anchors):
                raise ValueError(f"init={init!r}: there are only {len(self.anchors)} anchors")
            self.model.load_state_dict(self.layout.views(self.anchors[k].cpu()), strict=False)
            return
        from ..rundir import load_checkpoint

        if not os.path.isdir(init):
            raise ValueError(f"init={init!r} is neither 'random', 'anchor[:K]' nor a checkpoint folder")
        self.model.load_state_dict(load_checkpoint(init).state_dict())

    # ------------------------------------------------------------------ pieces of a step
    def sample_anchor_and_t(self, epoch: int, batch: int, rank: int) -> tuple[int, float]:
        """One anchor index and one t per minibatch, a pure function of (seed, epoch, batch, rank)."""
        g = torch.Generator().manual_seed(_mix_seed(self.config.seed, epoch, batch, rank))
        n = int(torch.randint(len(self.anchors), (1,), generator=g))
        c = self.config
        if c.t_sampling == "uniform":
            t = float(torch.rand((), generator=g))
        elif c.t_sampling == "beta":
            # Beta(a, a) by inverting its CDF at a uniform from the seeded generator.
            t = _beta_from_uniform(float(torch.rand((), generator=g)), c.t_beta)
        else:
            t = c.t_constant
        return n, t

    @torch.no_grad()
    def star_state_dict(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        views = self.layout.views(theta.detach().float().cpu())
        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        sd.update({k: v.clone() for k, v in views.items()})
        return sd

    def align_anchors(self, theta: torch.Tensor, state: StarlightState, progress: bool) -> None:
        """Weight-match every anchor to θ; each process aligns a slice, then permutations are exchanged.

        Rows are already in the previous alignment's frame, so matching starts from the identity (a warm
        start) and finds the change since then; that change is applied to the rows and composed into
        ``state.perms``.
        """
        from accelerate.utils import gather_object

        acc = self.accelerator
        star = {k: v.clone() for k, v in self.layout.views(theta.detach().float().cpu()).items()}
        mine = []
        indices = list(range(acc.process_index, len(self.anchors), acc.num_processes))
        for i in tqdm(indices, desc="aligning anchors", disable=not progress, leave=False):
            res = weight_matching(
                self.match_spec, star, self.layout.views(self.anchors[i].cpu()), seed=self.config.seed + i,
                max_iter=self.config.matching_max_iter, validate=False,
            )
            mine.append((i, res.perm))
        gathered = gather_object(mine) if acc.num_processes > 1 else mine
        for i, delta in gathered:
            name = self.anchor_names[i]
            self.permute_row(i, delta)
            state.perms[name] = compose_permutations(delta, state.perms[name]) if name in state.perms else delta

    @torch.no_grad()
    def permute_row(self, i: int, perm: dict[str, torch.Tensor]) -> None:
        """Permute anchor row ``i`` in place (through one transient model copy)."""
        if all(torch.equal(v, torch.arange(v.numel())) for v in perm.values()):
            return
        row = self.anchors[i]
        permuted = apply_permutation(self.match_spec, perm, self.layout.views(row.cpu()))
        row.copy_(self.layout.flatten(permuted).to(row.device))

    # ------------------------------------------------------------------ the loop
    def train(self) -> StarlightResult:
        c, acc = self.config, self.accelerator
        progress = acc.is_local_main_process
        device = acc.device
        self.model.to(device)
        flat_star = FlatStar(self.layout.flatten(self.model.state_dict()).to(device))
        bound = FlatBoundModel(self.model, self.layout, device)
        optimizer = make_optimizer([flat_star.theta], c.optimizer, c.learning_rate, c.weight_decay)
        train_loader = make_dataloader(self.dataset["train"], c.per_device_train_batch_size, shuffle=True, seed=c.seed)
        optimizer, train_loader = acc.prepare(optimizer, train_loader)
        self._flat_star = flat_star
        steps_per_epoch = math.ceil(len(train_loader) / c.gradient_accumulation_steps)
        raw_opt = getattr(optimizer, "optimizer", optimizer)
        scheduler = make_scheduler(raw_opt, c.lr_scheduler_type, steps_per_epoch * c.num_train_epochs)
        state = StarlightState()
        self._state, self._scheduler = state, scheduler  # saved by _save_state beside Accelerate's state
        input_name = self.model.main_input_name
        bn = has_batchnorm(self.model)
        bn_loader = make_dataloader(self.dataset["train"], c.per_device_eval_batch_size) if bn else None
        if c.report_to != "none":
            acc.init_trackers("starlight", config={k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                                                   for k, v in c.to_dict().items()})

        path = None
        if c.resume_from_checkpoint:  # rotation.py: torn/corrupt checkpoints are set aside, older ones tried
            def load(p):
                acc.load_state(p)
                state.load(p, scheduler, flat_star.theta)
            path = resume_with_fallback(acc, os.path.join(c.output_dir, "checkpoints"), c.resume_from_checkpoint,
                                        load, reset=state.__init__)
        if path is not None:
            acc.print(f"resumed from {path} at epoch {state.epoch}, step {state.global_step}")
            if bn:
                self._load_theta_into_model(flat_star)
            for i, name in enumerate(self.anchor_names):  # rows are in the original frames until now
                if name in state.perms:
                    self.permute_row(i, state.perms[name])

        theta_param = flat_star.theta
        bar = tqdm(total=steps_per_epoch * c.num_train_epochs, initial=state.global_step, desc="starlight",
                   disable=not progress)
        for epoch in range(state.epoch, c.num_train_epochs):
            align_due = c.align_every > 0 and epoch % c.align_every == 0
            if state.batches_in_epoch == 0 and align_due and state.aligned_epoch != epoch:
                self.align_anchors(theta_param, state, progress)
                state.aligned_epoch = epoch
            train_loader.set_epoch(epoch)
            loader = acc.skip_first_batches(train_loader, state.batches_in_epoch) if state.batches_in_epoch else train_loader
            self.model.train()
            running, count = 0.0, 0
            for batch in loader:
                n, t = self.sample_anchor_and_t(epoch, state.batches_in_epoch, acc.process_index)
                with acc.accumulate(flat_star):
                    anchor = self.anchors[n].to(device, non_blocking=True)
                    labels = batch["labels"]
                    inputs = {input_name: batch[input_name]}
                    with torch.no_grad():
                        torch.lerp(theta_param, anchor, t, out=bound.weights)  # (1-t)·θ + t·π_n(θ_n)
                    bound.grads.zero_()
                    with acc.autocast():
                        loss = nn.functional.cross_entropy(self.model(**inputs).logits.float(), labels)
                    acc.backward(loss)
                    grad = bound.grads.mul(1.0 - t)  # through the interpolation
                    if c.star_ce_weight > 0:  # "star + CE": μ·CE(f(θ))
                        with torch.no_grad():
                            bound.weights.copy_(theta_param)
                        bound.grads.zero_()
                        with acc.autocast():
                            star_loss = c.star_ce_weight * nn.functional.cross_entropy(
                                self.model(**inputs).logits.float(), labels)
                        acc.backward(star_loss)
                        grad += bound.grads
                        loss = loss + star_loss
                    theta_param.grad = grad if theta_param.grad is None else theta_param.grad.add_(grad)
                    if acc.sync_gradients and acc.num_processes > 1:
                        torch.distributed.all_reduce(theta_param.grad)
                        theta_param.grad.div_(acc.num_processes)
                    optimizer.step()
                    if acc.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                state.batches_in_epoch += 1
                running += float(loss.detach())
                count += 1
                if acc.sync_gradients:
                    state.global_step += 1
                    fault_point("starlight")
                    bar.update(1)
                    if state.global_step % c.logging_steps == 0:
                        acc.log({"train/loss": running / count, "train/lr": scheduler.get_last_lr()[0],
                                 "train/epoch": epoch}, step=state.global_step)
                        bar.set_postfix(loss=f"{running / count:.4f}", epoch=epoch)
                    if c.checkpointing_steps and state.global_step % c.checkpointing_steps == 0:
                        self._save_state()
            # End of epoch: the star's own BatchNorm statistics, recomputed over the training data.
            if bn:
                self._load_theta_into_model(flat_star)
                reset_bn_stats(self.model, bn_loader, c.bn_reset_batches, device)
            state.history.append({"epoch": epoch, "train_loss": running / max(count, 1)})
            state.epoch = epoch + 1
            state.batches_in_epoch = 0
            self._save_state()
        bar.close()

        # Final alignment of every anchor to the trained star (for BMA export and evaluation).
        self.align_anchors(theta_param, state, progress)
        self._load_theta_into_model(flat_star)
        if bn:
            reset_bn_stats(self.model, bn_loader, c.bn_reset_batches, device)
        if c.report_to != "none":
            acc.end_training()
        star = bound.release().to("cpu").eval()
        return StarlightResult(model=star, perms={k: dict(v) for k, v in state.perms.items()}, history=state.history)

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def _load_theta_into_model(self, flat_star) -> None:
        theta = flat_star.theta.detach()
        params = dict(self.model.named_parameters())
        for name, view in self.layout.views(theta).items():
            params[name].copy_(view)

    def _save_state(self) -> None:
        if self.config.output_dir is None:
            return
        save_checkpoint_state(self.accelerator, os.path.join(self.config.output_dir, "checkpoints"),
                              self.config.checkpoints_total_limit,
                              lambda folder: self._state.save(folder, self._scheduler, self._flat_star.theta))


def _has_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    xpu, mps = getattr(torch, "xpu", None), getattr(torch.backends, "mps", None)
    return bool((xpu is not None and xpu.is_available()) or (mps is not None and mps.is_available()))


def _beta_from_uniform(u: float, a: float) -> float:
    """A Beta(a, a) draw: the inverse CDF (scipy's ``betaincinv``) at a uniform ``u``."""
    from scipy.special import betaincinv

    return float(betaincinv(a, a, u))
