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

from . import __version__
from .data import DataArguments, load_task_dataset, prepare_dataset, raw_kind
from .finite import check_finite_checkpoint
from .locking import lock_output_dir, recover_atomic_leftovers
from .modeling import load_checkpoint
from .population_data import check_input_column, load_population_data
from .tasks import check_labels, task_for
from .io import atomic_write_json
from .rundir import Member, RunPaths, save_permutations
from .population import PopulationArguments, save_checkpoint
from .starlight.config import StarlightConfig
from .starlight.rotation import STATE_FILE
from .starlight.trainer import StarlightTrainer
from .errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["RunArguments", "run_starlight_pipeline", "prepare_output_dir", "RunError"]

RESULT_ENTRIES = RunPaths.RESULT_ENTRIES  # what a run writes (population/ is reusable, so not listed)


class RunError(UserError):
    """A run cannot start as asked (bad arguments, existing output, unusable population)."""


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
    merge_methods: str = field(default="", metadata={"help": "Free merges of the anchors written as RUN/merged-<method>"
                               "[-repair]/ and evaluated beside the star: comma-separated mergemany, cycle, reference "
                               "(default none)."})
    merge_repair: bool = field(default=False, metadata={"help": "Repair the --merge_methods merges over the train "
                                                                "split (BatchNorm reset, or REPAIR)."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_model_id:
            raise RunError("--push_to_hub needs --hub_model_id org/name")
        if self.bma_samples < 1:
            raise RunError(f"bma_samples must be >= 1, got {self.bma_samples}")
        if self.eval_num_points < 2:
            raise RunError(f"eval_num_points must be >= 2 (the two ends of each path), got {self.eval_num_points}")
        from .matching.merge import MERGE_METHODS

        bad = [m for m in self.methods() if m not in MERGE_METHODS]
        if bad:
            raise RunError(f"unknown --merge_methods {bad[0]!r}; use a comma-separated list of {', '.join(MERGE_METHODS)}")
        if self.merge_repair and not self.methods():
            raise RunError("--merge_repair needs --merge_methods (e.g. --merge_methods mergemany)")
        pairs = str(self.eval_pairs)
        if pairs != "all" and not (pairs.isdigit() and int(pairs) >= 1):
            raise RunError(f"eval_pairs must be 'all' or a number >= 1, got {self.eval_pairs!r}")

    def methods(self) -> list[str]:
        """The --merge_methods, in order, without repeats."""
        return list(dict.fromkeys(m.strip() for m in str(self.merge_methods or "").split(",") if m.strip()))

    def merged_names(self) -> list[str]:
        """The run's merged-<method>[-repair] folders these arguments write."""
        return [f"merged-{m}{'-repair' if self.merge_repair else ''}" for m in self.methods()]


def prepare_output_dir(config: StarlightConfig) -> None:
    """Check output_dir and --resume_from_checkpoint before any work or write; never touch population/.

    A folder is a run's only if it holds starlight.json: then RESULT_ENTRIES are the run's own, replaced
    with --overwrite_output_dir. A folder without it whose entries share a name with what a run writes
    is the user's: refused even with --overwrite_output_dir (nothing of the user's is ever deleted).
    """
    out, resume = config.output_dir, config.resume_from_checkpoint
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunError(f"output_dir {out} is a file; choose a folder path for --output_dir")
    paths = RunPaths(out)
    results = paths.existing_results()
    if resume:
        if resume == "latest":
            if not paths.is_run():
                raise RunError(f"--resume_from_checkpoint latest: {out} holds no run to resume (no "
                               f"{os.path.basename(paths.manifest_path)}); start without --resume_from_checkpoint")
        elif not os.path.isfile(os.path.join(resume, STATE_FILE)):
            raise RunError(f"--resume_from_checkpoint {resume} is not a Starlight checkpoint (no {STATE_FILE}); "
                           f"pass latest or a checkpoint folder under {paths.checkpoints_path}")
        return
    if results and not paths.is_run():
        raise RunError(f"output_dir {out} holds {results[0]} but is not a star-merge run (no "
                       f"{os.path.basename(paths.manifest_path)}); choose an empty or new --output_dir (your files "
                       "are left alone)")
    if results and not config.overwrite_output_dir:
        raise RunError(
            f"output_dir {out} already holds a run ({results[0]}); pass --overwrite_output_dir to replace it "
            "or --resume_from_checkpoint latest to continue it"
        )


def _check_merged_dirs(config: StarlightConfig, run_args: RunArguments) -> None:
    """The merges the run writes replace existing ones only with --overwrite_output_dir (or when resuming)."""
    if config.overwrite_output_dir or config.resume_from_checkpoint:
        return
    for name in run_args.merged_names():
        if os.path.lexists(os.path.join(config.output_dir, name)):
            raise RunError(f"output_dir {config.output_dir} already holds {name}; pass --overwrite_output_dir to "
                           "replace it or choose another --output_dir")


def write_run_merges(run_dir: str, run_args: RunArguments, seed: int = 0, progress: bool = True) -> list:
    """The --merge_methods merges of the run's anchors into RUN/merged-<method>[-repair]/ (``merge_checkpoints``,
    what ``star-merge merge`` runs); replaces the run's earlier ones (checked before the run started)."""
    from .merging import merge_checkpoints

    from .rundir import RunDirectory

    paths = RunPaths(run_dir)
    data_args = RunDirectory(run_dir).data_args if run_args.merge_repair else None
    return [merge_checkpoints([run_dir], paths.join(name), method=method, seed=seed, repair=run_args.merge_repair,
                              data_args=data_args, overwrite=True, progress=progress)
            for method, name in zip(run_args.methods(), run_args.merged_names())]


def _clear_results(out: str) -> None:
    paths = RunPaths(out)
    if not paths.is_run():
        return  # not a run: nothing here is ours to delete
    # the manifest last: a crash part-way leaves a folder still recognised as a run (so the flag works again)
    for e in sorted(paths.existing_results(), key=lambda e: paths.join(e) == paths.manifest_path):
        p = paths.join(e)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.remove(p)


def _resolve_given(pop: PopulationArguments, accelerator):
    from .references import resolve_members

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
    _check_merged_dirs(config, run_args)
    accelerator = accelerator or StarlightTrainer.make_accelerator(config)
    # One run per output_dir at a time (main process; a lock left by a dead process is free again).
    with lock_output_dir(config.output_dir) if accelerator.is_main_process else contextlib.nullcontext():
        if accelerator.is_main_process:
            prepare_output_dir(config)  # again, now that no other run can change the folder
            recover_atomic_leftovers(config.output_dir)
        return _run_locked(config, data_args, pop, run_args, accelerator)


@dataclass
class _Population:
    """The run's members and what they read: config, task, processor (and its source), prepared data, collator."""

    members: list
    model_config: object
    task: object
    processor: object
    processor_source: str | None
    dataset: object
    collator: object


def _given_population(config, data_args, pop, accelerator) -> _Population:
    """Members given as Hub ids / folders: the task, and a language model's tokenizer, come from the first anchor."""
    members = _resolve_given(pop, accelerator)
    if not pop.held_out:
        logger.warning("no --held_out models: star<->held-out barriers cannot be measured")
    data = load_population_data(data_args, [m.path for m in members], seed=config.seed,
                                context=accelerator.main_process_first)
    return _Population(members, data.model_config, data.task, data.processor, data.processor_source, data.dataset,
                       data.collate_fn)


def _builtin_processor(dataset, model_config):
    """The image processor a trained population reads raw images with (a built-in CIFAR architecture's, saved
    in every member folder); ``None`` for model-ready data; an error for raw data no built-in model reads."""
    from .models import VISION_MODEL_TYPES, image_processor_for

    kind = raw_kind(dataset)
    if kind is None:
        return None
    if kind == "image" and model_config.model_type in VISION_MODEL_TYPES:
        return image_processor_for(model_config)
    raise RunError(f"raw {kind} data needs a population that reads it: give --anchors (and --held_out) saved with "
                   f"their tokenizer / image processor, or train one of {', '.join(VISION_MODEL_TYPES)} on images")


def _builtin_population(config, data_args, pop, accelerator, paths: RunPaths) -> _Population:
    """The built-in population, trained (or reused, when its recorded settings match) into population/."""
    from .population import train_population

    with accelerator.main_process_first():
        dataset = load_task_dataset(data_args)
    model_config = pop.build_config(num_labels=dataset["train"].features["labels"].num_classes
                                    if hasattr(dataset["train"].features["labels"], "num_classes") else None)
    processor = _builtin_processor(dataset, model_config)
    check_labels(dataset, model_config.num_labels)
    if processor is None:
        check_input_column(dataset, model_config, data_args.dataset_name)
    task = task_for(model_config, name=data_args.task)
    if processor is not None:  # raw images: processed (and augmented) on the fly, the same for every member
        dataset, collator = prepare_dataset(dataset, task, processor, data_args, seed=config.seed)
    population_dir = pop.population_dir or paths.population_path
    # Every setting that determines a member is recorded with it and compared before it is reused;
    # --overwrite_output_dir retrains members whose settings differ, otherwise that is an error.
    train = functools.partial(train_population, model_config, dataset, population_dir, pop.num_anchors,
                              pop.num_held_out, pop.train_args(), seed=pop.population_seed, processor=processor,
                              data_settings=data_args.to_dict(), retrain_stale=config.overwrite_output_dir)
    if accelerator.is_main_process:
        recover_atomic_leftovers(population_dir)
        members = train()
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        members = train(progress=False)
    if processor is not None:
        return _Population(members, model_config, task, processor, members[0].path, dataset, collator)
    with accelerator.main_process_first():  # tokenised once (the datasets cache serves the other processes)
        dataset, collator = prepare_dataset(dataset, task, None, data_args, seed=config.seed)
    return _Population(members, model_config, task, None, None, dataset, collator)


def _manifest(config, data_args, pop, run_args, population: _Population, trainer, accelerator) -> dict:
    return {
        "format": "star-merge-run/1",
        "config": config.to_dict(),
        "data": data_args.to_dict(),
        "population": asdict(pop),
        "run": asdict(run_args),
        "model_type": population.model_config.model_type,
        "model_input_name": trainer.model.main_input_name,
        "processor": (RunPaths(config.output_dir).relative(population.processor_source)
                      if population.processor_source else None),
        "members": [_member_entry(m, config.output_dir) for m in population.members],
        "status": "training",
        "num_processes": accelerator.num_processes,
    }


def _save_results(paths: RunPaths, manifest: dict, result, processor, config, train_seconds: float,
                  accelerator) -> None:
    """The star, its permutations, the finished manifest and report.json's first keys (main process)."""
    save_checkpoint(result.model, paths.star_path, overwrite=True, processor=processor,
                    extra_json={"history": result.history, "starlight": config.to_dict()})
    save_permutations(paths.permutations_path, result.perms)
    manifest.update(status="trained", history=result.history, train_seconds=round(train_seconds, 1))
    atomic_write_json(paths.manifest_path, manifest)
    # report.json starts with every setting and each member's source; evaluation adds its keys.
    atomic_write_json(paths.report_json, {
        "star_merge_version": __version__,
        "config": manifest["config"], "data": manifest["data"], "population": manifest["population"],
        "run": manifest["run"], "model_type": manifest["model_type"], "members": manifest["members"],
        "training": {"history": result.history, "train_seconds": round(train_seconds, 1),
                     "num_processes": accelerator.num_processes},
    })


def _run_locked(config, data_args, pop, run_args, accelerator) -> dict:
    paths = RunPaths(config.output_dir)
    started = time.time()
    if data_args.augment is None:  # the trained population's architecture decides (population/defaults.py)
        from .population.defaults import recipe_defaults

        data_args.augment = False if pop.anchors else bool(recipe_defaults(pop.model_type)["augment"])
    if pop.anchors:
        population = _given_population(config, data_args, pop, accelerator)
    else:
        population = _builtin_population(config, data_args, pop, accelerator, paths)
    for m in population.members:  # NaN/Inf or truncated weights: one line naming the member, before any training
        check_finite_checkpoint(m.path, f"{m.role} {m.name} ({m.source})")
    # Anchors are read one at a time into the trainer's anchor matrix (one copy per anchor in memory).
    anchor_sds = [(m.name, functools.partial(_load_state_dict, m.path)) for m in population.members
                  if m.role == "anchor"]
    if accelerator.is_main_process and config.overwrite_output_dir and not config.resume_from_checkpoint:
        _clear_results(config.output_dir)
    accelerator.wait_for_everyone()

    trainer = StarlightTrainer(model=population.model_config, args=config, anchors=anchor_sds,
                               train_dataset=population.dataset["train"], eval_dataset=population.dataset["test"],
                               task=population.task, accelerator=accelerator, data_collator=population.collator)
    manifest = _manifest(config, data_args, pop, run_args, population, trainer, accelerator)
    if accelerator.is_main_process:
        atomic_write_json(paths.manifest_path, manifest)
    result = trainer.train(end_trackers=False)
    try:
        if accelerator.is_main_process:
            _save_results(paths, manifest, result, population.processor, config, time.time() - started, accelerator)
        return finish_run(config.output_dir, run_args, seed=config.seed, accelerator=accelerator,
                          tracker_step=trainer.state.global_step)
    finally:
        if config.trackers():
            accelerator.end_training()


def finish_run(run_dir: str, run_args: RunArguments, seed: int = 0, accelerator=None,
               tracker_step: int | None = None) -> dict:
    """Export the BMA, write the --merge_methods merges, evaluate (all processes), log the evaluation to the
    accelerator's trackers (at ``tracker_step``), write the model card and optionally push (main process)."""
    from accelerate import PartialState

    from .bma import export_bma
    from .evaluation.report import evaluate_run
    from .evaluation.tracking import log_evaluation
    from .hub.model_card import write_model_card

    state = PartialState()
    if state.is_main_process and not run_args.skip_bma:
        export_bma(run_dir, num_samples=run_args.bma_samples, seed=seed, overwrite=True)
    if state.is_main_process and run_args.methods():
        write_run_merges(run_dir, run_args, seed=seed, progress=state.is_local_main_process)
    state.wait_for_everyone()
    pairs = int(run_args.eval_pairs) if str(run_args.eval_pairs).isdigit() else run_args.eval_pairs
    report = evaluate_run(run_dir, pairs=pairs, seed=seed, overwrite=True, num_points=run_args.eval_num_points,
                          accelerator=accelerator, progress=state.is_local_main_process)
    if accelerator is not None:
        log_evaluation(accelerator, report, run_dir, step=tracker_step)
    if state.is_main_process:
        write_model_card(run_dir, license=run_args.license)
        if run_args.push_to_hub:
            from .hub.push import push_run

            bma_id = run_args.hub_bma_model_id or (f"{run_args.hub_model_id}-bma" if not run_args.skip_bma else None)
            push_run(run_dir, run_args.hub_model_id, bma_repo_id=bma_id, private=run_args.hub_private)
    state.wait_for_everyone()
    with open(RunPaths(run_dir).report_json) as f:
        return json.load(f)


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def _member_entry(m: Member, out: str) -> dict:
    d = m.to_dict()
    d["path"] = RunPaths(out).relative(d["path"])
    if d["source"] and os.path.isabs(d["source"]):
        d["source"] = RunPaths(out).relative(d["source"])
    return d
