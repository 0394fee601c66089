"""A whole Starlight run: population in, star + evaluation + BMA + model card out (what recipes/star.py calls)."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field

import torch

from .. import __version__
from ..data import DataArguments, DatasetError, check_labels, load_task_dataset
from ..finite import check_finite_checkpoint
from ..locking import lock_output_dir, recover_atomic_leftovers
from ..rundir import (
    MANIFEST_NAME,
    PERMUTATIONS_NAME,
    Member,
    atomic_write_json,
    load_checkpoint,
    save_permutations,
)
from ..training import TrainArguments, save_checkpoint
from .config import StarlightConfig
from .rotation import STATE_FILE
from .trainer import StarlightTrainer

logger = logging.getLogger(__name__)

__all__ = ["PopulationArguments", "RunArguments", "run_starlight_pipeline", "prepare_output_dir", "RunError"]

# Everything a run writes except population/ (which is reusable across runs: members are seeded).
RESULT_ENTRIES = ("star", "bma", "checkpoints", "logs", MANIFEST_NAME, PERMUTATIONS_NAME, "report.json", "report.md",
                  "README.md", "interpolation_curves.png", "barrier_distribution.png", "reliability.png")


class RunError(ValueError):
    """A run cannot start as asked (bad arguments, existing output, unusable population)."""


@dataclass
class PopulationArguments:
    """The population: given (Hub ids, local folders, a population file) or trained by the recipe."""

    anchors: list[str] | None = field(
        default=None, metadata={"help": "Anchor models: org/name[@revision], local folders or a population file."}
    )
    held_out: list[str] | None = field(
        default=None, metadata={"help": "Held-out models for evaluation (never shown to Starlight), same forms."}
    )
    model_type: str = field(default="star-mlp", metadata={"help": "Architecture of a trained population."})
    model_config: str = field(
        default='{"hidden_sizes": [512, 512]}', metadata={"help": "JSON of config fields for a trained population."}
    )
    num_anchors: int = field(default=10, metadata={"help": "Anchors to train when --anchors is not given."})
    num_held_out: int = field(default=5, metadata={"help": "Held-out models to train when --held_out is not given."})
    population_dir: str | None = field(default=None, metadata={"help": "Where to train it (default RUN/population)."})
    population_seed: int = field(default=0, metadata={"help": "Anchor i uses seed+i, held-out j seed+1000+j."})
    population_epochs: int = field(default=20, metadata={"help": "Epochs per trained member."})
    population_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of trained members."})
    population_batch_size: int = field(default=128, metadata={"help": "Batch size of trained members."})
    population_optimizer: str = field(default="adamw", metadata={"help": "adamw | sgd."})
    population_weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of trained members."})

    def __post_init__(self):
        if self.num_anchors < 1:
            raise RunError("num_anchors must be >= 1 (Starlight needs at least one anchor)")
        if self.num_held_out < 0:
            raise RunError("num_held_out must be >= 0")
        if self.population_epochs < 1 or self.population_batch_size < 1 or self.population_learning_rate <= 0:
            raise RunError("population_epochs and population_batch_size must be >= 1 and population_learning_rate > 0")
        try:
            cfg = json.loads(self.model_config) if isinstance(self.model_config, str) else self.model_config
        except json.JSONDecodeError as e:
            raise RunError(f"--model_config is not valid JSON ({e}); e.g. '{{\"hidden_sizes\": [512, 512]}}'") from None
        if not isinstance(cfg, dict):
            raise RunError("--model_config must be a JSON object of config fields")
        self.model_config = json.dumps(cfg)
        self.train_args()  # validates the population's optimizer before any work

    def train_args(self) -> TrainArguments:
        return TrainArguments(
            num_train_epochs=self.population_epochs,
            learning_rate=self.population_learning_rate,
            per_device_train_batch_size=self.population_batch_size,
            optimizer=self.population_optimizer,
            weight_decay=self.population_weight_decay,
        )

    def build_config(self, num_labels: int | None = None):
        from transformers import AutoConfig

        from ..models import register_builtin_models

        register_builtin_models()
        kwargs = json.loads(self.model_config)
        if num_labels is not None:
            kwargs.setdefault("num_labels", num_labels)
        try:
            return AutoConfig.for_model(self.model_type, **kwargs)
        except (ValueError, TypeError) as e:
            raise RunError(f"cannot build a {self.model_type!r} config from {kwargs}: {str(e).splitlines()[0]}") from None


@dataclass
class RunArguments:
    """What happens after training: evaluation, BMA export, publishing."""

    eval_pairs: str = field(default="all", metadata={"help": "anchor<->held-out pairs to evaluate: all or a number."})
    eval_num_points: int = field(default=11, metadata={"help": "Points on each interpolation path."})
    bma_samples: int = field(default=16, metadata={"help": "Points of the star domain in the exported BMA."})
    skip_bma: bool = field(default=False, metadata={"help": "Do not export bma/."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push star/ (and bma/) to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id for the star (org/name)."})
    hub_bma_model_id: str | None = field(default=None, metadata={"help": "Repo id for the BMA (default <id>-bma)."})
    hub_private: bool = field(default=False, metadata={"help": "Create private repos."})
    license: str = field(default="apache-2.0", metadata={"help": "License in the model card."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise RunError("--push_to_hub needs --hub_model_id org/name")
        if self.bma_samples < 1:
            raise RunError(f"bma_samples must be >= 1, got {self.bma_samples}")
        if self.eval_num_points < 2:
            raise RunError(f"eval_num_points must be >= 2 (the two ends of each path), got {self.eval_num_points}")
        pairs = str(self.eval_pairs)
        if pairs != "all" and not (pairs.isdigit() and int(pairs) >= 1):
            raise RunError(f"eval_pairs must be 'all' or a number >= 1, got {self.eval_pairs!r}")


def prepare_output_dir(config: StarlightConfig) -> None:
    """Check output_dir and --resume_from_checkpoint before any work or write; never touch population/.

    A folder is a run's only if it holds starlight.json: then RESULT_ENTRIES are the run's own, replaced
    with --overwrite_output_dir. A folder without it whose entries share a name with what a run writes
    is the user's: refused even with --overwrite_output_dir (nothing of the user's is ever deleted).
    """
    out, resume = config.output_dir, config.resume_from_checkpoint
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"output_dir {out} is a file; choose a folder path for --output_dir")
    is_run = os.path.isfile(os.path.join(out, MANIFEST_NAME))
    results = [e for e in RESULT_ENTRIES if os.path.lexists(os.path.join(out, e))]
    if resume:
        if resume == "latest":
            if not is_run:
                raise RunError(f"--resume_from_checkpoint latest: {out} holds no run to resume (no {MANIFEST_NAME}); "
                               "start without --resume_from_checkpoint")
        elif not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise RunError(f"--resume_from_checkpoint {resume} is not a Starlight checkpoint (no {STATE_FILE}); "
                           f"pass latest or a checkpoint folder under {out}/checkpoints")
        return
    if results and not is_run:
        raise RunError(f"output_dir {out} holds {results[0]} but is not a star-merge run (no {MANIFEST_NAME}); "
                       "choose an empty or new --output_dir (your files are left alone)")
    if results and not config.overwrite_output_dir:
        raise RunError(
            f"output_dir {out} already holds a run ({results[0]}); pass --overwrite_output_dir to replace it "
            "or --resume_from_checkpoint latest to continue it"
        )


def _clear_results(out: str) -> None:
    if not os.path.isfile(os.path.join(out, MANIFEST_NAME)):
        return  # not a run: nothing here is ours to delete
    # starlight.json last: a crash part-way leaves a folder still recognised as a run (so the flag works again)
    for e in sorted(RESULT_ENTRIES, key=lambda e: e == MANIFEST_NAME):
        p = os.path.join(out, e)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def _resolve_given(pop: PopulationArguments, accelerator):
    from ..hub import resolve_members

    with accelerator.main_process_first():
        anchors = resolve_members(pop.anchors, role="anchor", progress=accelerator.is_main_process)
        held = resolve_members(pop.held_out, role="held-out", like=anchors, progress=accelerator.is_main_process) \
            if pop.held_out else []
    members = [
        Member(name=f"{role}-{i:02d}", role=role, path=m.path, source=m.source, repo_id=m.repo_id, revision=m.revision)
        for role, group in (("anchor", anchors), ("held-out", held))
        for i, m in enumerate(group)
    ]
    return members


def run_starlight_pipeline(
    config: StarlightConfig,
    data_args: DataArguments,
    pop: PopulationArguments,
    run_args: RunArguments,
    accelerator=None,
) -> dict:
    """Run Starlight end to end into ``config.output_dir``; returns the report (report.json's content)."""
    if config.output_dir is None:
        raise RunError("output_dir is required")
    config.output_dir = os.path.abspath(config.output_dir)
    if pop.held_out and not pop.anchors:
        raise RunError("--held_out without --anchors: give both, or neither to train the built-in population")
    prepare_output_dir(config)  # before any work or write
    accelerator = accelerator or StarlightTrainer.make_accelerator(config)
    # One run per output_dir at a time (main process; a lock left by a dead process is free again).
    with lock_output_dir(config.output_dir) if accelerator.is_main_process else contextlib.nullcontext():
        if accelerator.is_main_process:
            prepare_output_dir(config)  # again, now that no other run can change the folder
            recover_atomic_leftovers(config.output_dir)
        return _run_locked(config, data_args, pop, run_args, accelerator)


def _run_locked(config, data_args, pop, run_args, accelerator) -> dict:
    from ..population import train_population

    started = time.time()
    with accelerator.main_process_first():
        dataset = load_task_dataset(data_args)

    # ---- the population
    if pop.anchors:
        members = _resolve_given(pop, accelerator)
        if not pop.held_out:
            logger.warning("no --held_out models: star<->held-out barriers cannot be measured")
        model_config = _load_config(members[0].path)
        check_labels(dataset, model_config.num_labels)
        check_input_column(dataset, model_config, data_args.dataset_name)
    else:
        model_config = pop.build_config(num_labels=dataset["train"].features["labels"].num_classes
                                        if hasattr(dataset["train"].features["labels"], "num_classes") else None)
        check_labels(dataset, model_config.num_labels)
        check_input_column(dataset, model_config, data_args.dataset_name)
        population_dir = pop.population_dir or os.path.join(config.output_dir, "population")
        # Every setting that determines a member is recorded with it and compared before it is reused;
        # --overwrite_output_dir retrains members whose settings differ, otherwise that is an error.
        train = functools.partial(train_population, model_config, dataset, population_dir, pop.num_anchors,
                                  pop.num_held_out, pop.train_args(), seed=pop.population_seed,
                                  data_settings=data_args.to_dict(), retrain_stale=config.overwrite_output_dir)
        if accelerator.is_main_process:
            recover_atomic_leftovers(population_dir)
            members = train()
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:
            members = train(progress=False)
    for m in members:  # NaN/Inf or truncated weights: one line naming the member, before any training
        check_finite_checkpoint(m.path, f"{m.role} {m.name} ({m.source})")
    # Anchors are read one at a time into the trainer's anchor matrix (one copy per anchor in memory).
    anchor_sds = [(m.name, functools.partial(_load_state_dict, m.path)) for m in members if m.role == "anchor"]

    if accelerator.is_main_process and config.overwrite_output_dir and not config.resume_from_checkpoint:
        _clear_results(config.output_dir)
    accelerator.wait_for_everyone()

    trainer = StarlightTrainer(config, model_config, anchor_sds, dataset, accelerator=accelerator)
    manifest = {
        "format": "star-merge-run/1",
        "config": config.to_dict(),
        "data": data_args.to_dict(),
        "population": asdict(pop),
        "run": asdict(run_args),
        "model_type": model_config.model_type,
        "model_input_name": trainer.model.main_input_name,
        "members": [_member_entry(m, config.output_dir) for m in members],
        "status": "training",
        "num_processes": accelerator.num_processes,
    }
    if accelerator.is_main_process:
        atomic_write_json(os.path.join(config.output_dir, MANIFEST_NAME), manifest)
    result = trainer.train()
    train_seconds = time.time() - started

    if accelerator.is_main_process:
        save_checkpoint(result.model, os.path.join(config.output_dir, "star"), overwrite=True,
                        extra_json={"history": result.history, "starlight": config.to_dict()})
        save_permutations(os.path.join(config.output_dir, PERMUTATIONS_NAME), result.perms)
        manifest.update(status="trained", history=result.history, train_seconds=round(train_seconds, 1))
        atomic_write_json(os.path.join(config.output_dir, MANIFEST_NAME), manifest)
        # report.json starts with every setting and each member's source; evaluation adds its keys.
        atomic_write_json(os.path.join(config.output_dir, "report.json"), {
            "star_merge_version": __version__,
            "config": manifest["config"], "data": manifest["data"], "population": manifest["population"],
            "run": manifest["run"], "model_type": manifest["model_type"], "members": manifest["members"],
            "training": {"history": result.history, "train_seconds": round(train_seconds, 1),
                         "num_processes": accelerator.num_processes},
        })
    return finish_run(config.output_dir, run_args, seed=config.seed, accelerator=accelerator)


def finish_run(run_dir: str, run_args: RunArguments, seed: int = 0, accelerator=None) -> dict:
    """Export the BMA, evaluate (all processes), write the model card and optionally push (main process)."""
    from accelerate import PartialState

    from ..bma import export_bma
    from ..evaluation import evaluate_run
    from ..model_card import write_model_card

    state = PartialState()
    if state.is_main_process and not run_args.skip_bma:
        export_bma(run_dir, num_samples=run_args.bma_samples, seed=seed, overwrite=True)
    state.wait_for_everyone()
    pairs = int(run_args.eval_pairs) if str(run_args.eval_pairs).isdigit() else run_args.eval_pairs
    evaluate_run(run_dir, pairs=pairs, seed=seed, overwrite=True, num_points=run_args.eval_num_points,
                 accelerator=accelerator, progress=state.is_local_main_process)
    if state.is_main_process:
        write_model_card(run_dir, license=run_args.license)
        if run_args.push_to_hub:
            from ..hub import push_run

            bma_id = run_args.hub_bma_model_id or (f"{run_args.hub_model_id}-bma" if not run_args.skip_bma else None)
            push_run(run_dir, run_args.hub_model_id, bma_repo_id=bma_id, private=run_args.hub_private)
    state.wait_for_everyone()
    with open(os.path.join(run_dir, "report.json")) as f:
        return json.load(f)


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def _load_config(path: str):
    from transformers import AutoConfig

    from ..models import register_builtin_models

    register_builtin_models()
    return AutoConfig.from_pretrained(path)


def check_input_column(dataset, model_config, dataset_name: str) -> None:
    """The dataset must have the column the model reads (e.g. star-mlp reads input_values)."""
    import transformers

    from ..models import BUILTIN_CLASSES

    arch = (getattr(model_config, "architectures", None) or [None])[0]
    cls = BUILTIN_CLASSES.get(arch) or getattr(transformers, arch or "", None)
    wanted = getattr(cls, "main_input_name", None)
    columns = dataset["train"].column_names
    if isinstance(wanted, str) and wanted not in columns:
        raise DatasetError(f"{model_config.model_type} models read {wanted!r} but dataset {dataset_name!r} has "
                           f"{[c for c in columns if c != 'labels']}; pick a matching --model_type or --dataset_name")


def _member_entry(m: Member, out: str) -> dict:
    d = m.to_dict()
    if os.path.abspath(d["path"]).startswith(out + os.sep):
        d["path"] = os.path.relpath(d["path"], out)
    if d["source"] and os.path.isabs(d["source"]) and d["source"].startswith(out + os.sep):
        d["source"] = os.path.relpath(d["source"], out)
    return d
