"""One way to a population's model-ready data: task and processor from the members, dataset, checks, collator.

Used by the recipe (a given population), ``star-merge barrier`` and :meth:`RunDirectory.load_data` (evaluation,
the BMA export): each used to repeat this chain.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .data import BUILTIN_DATASETS, DataArguments, load_task_dataset, prepare_dataset, raw_kind, task_and_processor
from .tasks import DatasetError

__all__ = ["PopulationData", "check_input_column", "load_population_data"]

_UNSET: Any = object()


@dataclass
class PopulationData:
    """What a population's models read: the task, the first member's config, the processor (and where it was
    found), the model-ready splits and their batch collator (``None``: torch's default)."""

    task: Any
    model_config: Any
    processor: Any
    processor_source: str | None
    dataset: Any
    collate_fn: Callable | None


def check_input_column(dataset, model_config, dataset_name: str, given: bool = False) -> None:
    """The dataset must have the column the model reads (e.g. star-mlp reads input_values). ``given``: the models
    are the user's own (not the built-in population), so a built-in dataset is only ever the demo's default."""
    from .modeling import model_class_for

    try:
        wanted = getattr(model_class_for(model_config), "main_input_name", None)
    except ValueError:
        return
    columns = dataset["train"].column_names
    if not isinstance(wanted, str) or wanted in columns:
        return
    has = [c for c in columns if c != "labels"]
    if given and dataset_name in BUILTIN_DATASETS:  # a demo dataset (mnist1d: --dataset_name's default) never fits silently
        raise DatasetError(f"no built-in dataset fits these {model_config.model_type} models (they read {wanted!r}; "
                           f"the built-in {dataset_name!r} holds {has}); name their data with --dataset_name "
                           "(and --text_column / --input_column)")
    raise DatasetError(f"{model_config.model_type} models read {wanted!r} but dataset {dataset_name!r} has "
                       f"{has}; pick a matching --model_type or --dataset_name")


def load_population_data(
    data_args: DataArguments,
    member_paths: Sequence[str],
    *,
    processor=_UNSET,
    model_input_name: str | None = None,
    seed: int = 0,
    evaluation: bool = False,
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> PopulationData:
    """The data of the population whose member checkpoints are ``member_paths`` (the first one decides the task).

    The task is ``data_args.task`` or the first member's; a language model's text is tokenised into blocks with
    its tokenizer; the labels and the input column are checked against the first member's config; raw text /
    images are processed with the population's processor (the first member's, or ``--processor_name_or_path``;
    the others must agree), or with ``processor`` when the caller already has it. ``evaluation``: never augmented,
    and a language model's stored splits keep their one fixed masking (no re-masking collator). ``context``: what
    loading and preparing run inside (the recipe: ``accelerator.main_process_first``).
    """
    from .modeling import load_config
    from .processing import population_processor

    if evaluation:
        data_args = dataclasses.replace(data_args, augment=False)
    model_config = load_config(member_paths[0])
    task, tokenizer = task_and_processor(data_args, member_paths[0])
    if getattr(task, "data_kind", None) == "text":  # language models: blocks fit the members' position table
        from .tasks.lm_data import cap_block_size

        data_args = cap_block_size(data_args, model_config)
    if processor is not _UNSET and processor is not None and tokenizer is not None:
        tokenizer = processor  # the caller's processor tokenises too (a run's saved tokenizer)
    with context():
        dataset = load_task_dataset(data_args, model_input_name, task=task, processor=tokenizer)
    raw = raw_kind(dataset)
    if raw is None:  # raw text / images become the model's inputs in prepare_dataset below
        check_input_column(dataset, model_config, data_args.dataset_name, given=True)
    task.check_dataset(dataset, model_config)
    source = None
    if processor is _UNSET:
        processor, source = population_processor(list(member_paths), data_args.processor_name_or_path,
                                                 required=raw is not None or tokenizer is not None)
    with context():  # tokenised once (the datasets cache serves the other processes)
        dataset, collate_fn = prepare_dataset(dataset, task, processor, data_args, seed=seed)
    if evaluation and getattr(task, "data_kind", None) == "text":
        collate_fn = None
    return PopulationData(task, model_config, processor, source, dataset, collate_fn)
