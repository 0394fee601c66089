"""``StarlightConfig``: every setting of a Starlight run, in the ``TrainingArguments`` naming style."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import UserError
from .initial import check_init


@dataclass
class StarlightConfig:
    """Settings of the Starlight trainer. HfArgumentParser-compatible; validated in ``__post_init__``."""

    output_dir: str | None = field(default=None, metadata={"help": "Run directory (default outputs/<config name>)."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the results in a non-empty output_dir (population/ is reused)."}
    )
    num_train_epochs: int = field(default=20, metadata={"help": "Epochs of Starlight training."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate."})
    per_device_train_batch_size: int = field(default=128, metadata={"help": "Batch size per process."})
    per_device_eval_batch_size: int = field(default=512, metadata={"help": "Evaluation batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd (Nesterov, momentum 0.9)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay, on the star's weights only."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "cosine | constant."})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16 (Accelerate autocast)."})
    seed: int = field(default=0, metadata={"help": "Seed of every random choice (init, data order, anchor and t)."})
    report_to: str = field(default="none", metadata={
        "help": "none, all, or trackers Accelerate supports, comma-separated: tensorboard, wandb, trackio, "
                "comet_ml, mlflow, clearml, dvclive, swanlab, aim."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N optimizer steps."})
    checkpointing_steps: int | None = field(
        default=None, metadata={"help": "Also save Accelerate state every N optimizer steps (always each epoch)."}
    )
    checkpoints_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most N >= 1 complete checkpoints (the newest is never removed)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "'latest' or a checkpoint folder to continue from."}
    )
    # Starlight's own settings
    align_every: int = field(
        default=1, metadata={"help": "Epochs between anchor re-alignments (1 = every epoch incl. epoch 0; 0 = never)."}
    )
    t_sampling: str = field(default="uniform", metadata={"help": "uniform | beta | constant."})
    t_beta: float = field(default=2.0, metadata={"help": "Beta(a, a) parameter when t_sampling=beta."})
    t_constant: float = field(default=0.5, metadata={"help": "t when t_sampling=constant."})
    star_ce_weight: float = field(default=0.0, metadata={"help": "μ of 'star + CE': adds μ·CE(f(θ))."})
    init: str = field(
        default="random", metadata={"help": "random | anchor (anchor 0) | anchor:K | merge (the anchors' MergeMany) | "
                                            "merge:METHOD (mergemany, cycle, reference) | a checkpoint folder."}
    )
    anchor_device: str = field(
        default="cpu", metadata={"help": "cpu (only the sampled anchor moves) | accelerator (all on the device)."}
    )
    symmetry: str = field(
        default="permutation",
        metadata={"help": "permutation | orthogonal: the star is trained in folded form (norm weights 1) and anchors "
                          "re-aligned with orthogonal maps where the family allows them (docs/concepts.md)."},
    )
    matching_max_iter: int = field(default=100, metadata={"help": "Weight matching sweep limit."})
    matching_solver: str = field(
        default="auto", metadata={"help": "auto | scipy | lapjv | cuda: assignment solver of the re-alignment (all exact)."}
    )
    matching_order: str = field(
        default="auto",
        metadata={"help": "auto | random | colored: the re-alignment's visiting order; colored visits classes of "
                          "independent permutations (one batched round each); auto = colored where the alignment is "
                          "batched (θ on a GPU), random elsewhere."},
    )
    matching_presolve: str = field(
        default="never",
        metadata={"help": "never | first | always: weight matching's presolve (an incoming-weighted descent first, on "
                          "chains of permutations: MLP, plain CNN) never (measured no better on trained anchors), at the "
                          "first alignment of the unaligned anchors only, or at every alignment; the run's evaluation "
                          "follows (never: never, else auto)."},
    )
    align_overlap: bool = field(
        default=False,
        metadata={"help": "Re-align in a background thread while the epoch trains (each process its own anchors): a schedule "
                          "change, epoch e trains with anchors aligned to the star of epoch e-1."},
    )
    align_schedule: str = field(
        default="fixed",
        metadata={"help": "fixed (every anchor at every align_every-th epoch) | adaptive (an anchor whose "
                          "permutation did not change at its last re-alignment waits twice as long, up to 8x)."},
    )
    anchor_sharding: str = field(
        default="auto",
        metadata={"help": "auto (on when processes > 1) | on | off: each process holds, aligns and samples only "
                          "its share of the anchors (anchor i on process i mod processes)."},
    )
    reduce_overlap: bool = field(
        default=False,
        metadata={"help": "All-reduce θ's gradient in buckets during the backward (as DDP) instead of one call "
                          "after it (several processes)."},
    )
    reduce_bucket_mb: float = field(default=25.0, metadata={"help": "Bucket size of reduce_overlap, in MiB of float32."})
    bn_reset_batches: int | None = field(
        default=None, metadata={"help": "Batches used to recompute BatchNorm statistics (default: all)."}
    )

    def __post_init__(self):
        choices = {
            "optimizer": ("adamw", "sgd"),
            "lr_scheduler_type": ("cosine", "constant"),
            "mixed_precision": ("no", "fp16", "bf16"),
            "t_sampling": ("uniform", "beta", "constant"),
            "anchor_device": ("cpu", "accelerator"),
            "symmetry": ("permutation", "orthogonal"),
            "matching_solver": ("auto", "scipy", "lapjv", "cuda"),
            "matching_order": ("auto", "random", "colored"),
            "matching_presolve": ("never", "first", "always"),
            "align_schedule": ("fixed", "adaptive"),
            "anchor_sharding": ("auto", "on", "off"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size",
                    "gradient_accumulation_steps", "logging_steps", "matching_max_iter")
        for name in positive:
            if getattr(self, name) < 1:
                raise UserError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reduce_bucket_mb <= 0:
            raise UserError(f"reduce_bucket_mb must be > 0, got {self.reduce_bucket_mb}")
        if self.align_every < 0:
            raise UserError("align_every must be >= 0 (0 = never re-align)")
        if self.learning_rate <= 0:
            raise UserError("learning_rate must be > 0")
        if self.star_ce_weight < 0:
            raise UserError("star_ce_weight must be >= 0")
        if not 0.0 <= self.t_constant <= 1.0:
            raise UserError("t_constant must lie in [0, 1]")
        if self.t_beta <= 0:
            raise UserError("t_beta must be > 0")
        if self.checkpointing_steps is not None and self.checkpointing_steps < 1:
            raise UserError("checkpointing_steps must be >= 1")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise UserError(f"checkpoints_total_limit must be >= 1 (the newest checkpoint is always kept), got "
                             f"{self.checkpoints_total_limit}")
        check_init(self.init)
        self._check_trackers()

    def trackers(self) -> list[str] | None:
        """``report_to`` as Accelerate's ``log_with``: None for ``none``, else the tracker names."""
        names = [n.strip() for n in str(self.report_to).split(",") if n.strip()]
        return None if names in ([], ["none"]) else names

    def _check_trackers(self) -> None:
        from accelerate.utils import LoggerType

        known = sorted(t.value for t in LoggerType)
        bad = [n for n in self.trackers() or [] if n not in known]
        if bad:
            raise UserError(f"report_to={self.report_to!r}: unknown tracker {bad[0]!r}; write none or trackers "
                            f"Accelerate supports, comma-separated ({', '.join(known)})")

    def presolve_at(self, first: bool) -> bool | str:
        """Weight matching's ``presolve`` for a re-alignment (``first``: the anchors are still unaligned)."""
        return "auto" if self.matching_presolve == "always" or (self.matching_presolve == "first" and first) else False

    def to_dict(self) -> dict:
        return asdict(self)
