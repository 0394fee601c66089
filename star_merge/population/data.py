"""The data a population is trained on: the dataset made model-ready with the population's processor, and the
members' config sized from the dataset's labels (what ``recipes/train_population.py`` trains from)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = ["TrainingData", "dataset_labels", "load_training_data"]


@dataclass
class TrainingData:
    """The members' config, their task, the processor (saved with each member), the prepared splits, the collator."""

    model_config: Any
    task: Any
    processor: Any
    dataset: Any
    collate_fn: Any


def dataset_labels(dataset) -> tuple[int, list[str] | None]:
    """``(num_labels, names)``: from the ``labels`` ClassLabel when the dataset has one (names included), else
    one more than the largest integer label of any split (names ``None``)."""
    feature = dataset["train"].features.get("labels")
    names = list(getattr(feature, "names", None) or []) or None
    if names:
        return len(names), names
    return 1 + max(int(np.max(np.asarray(split["labels"]))) for split in dataset.values()), None


def load_training_data(data_args, pop, seed: int = 0,
                       context=contextlib.nullcontext) -> TrainingData:
    """Dataset, labels, config and processor of a population to train (``pop``: PopulationArguments).

    Raw text or images are tokenised / processed with ``--processor_name_or_path`` (training images augmented with
    ``--augment``); the head is sized from the dataset's ClassLabel (``id2label`` from its names). ``context``:
    what loading and preparing run inside (several processes: ``main_process_first``).
    """
    from ..data import load_task_dataset, prepare_dataset, raw_kind
    from ..processing import load_processor
    from ..tasks import check_labels, task_for
    from .arguments import PopulationArgumentsError

    with context():
        dataset = load_task_dataset(data_args)
    num_labels, names = dataset_labels(dataset)
    model_config = pop.build_config(num_labels=num_labels, label_names=names)
    if model_config.num_labels != num_labels:
        raise PopulationArgumentsError(
            f"--model_config sets num_labels={model_config.num_labels} but dataset {data_args.dataset_name!r} has "
            f"{num_labels} classes; leave num_labels out of --model_config (the head is sized from the dataset)")
    check_labels(dataset, num_labels)
    raw = raw_kind(dataset)
    if raw and not data_args.processor_name_or_path:
        raise UserError(f"dataset {data_args.dataset_name!r} holds raw {raw}: pass --processor_name_or_path (a "
                        "folder or Hub id with the tokenizer / image processor the population reads its data with)")
    processor = load_processor(data_args.processor_name_or_path) if data_args.processor_name_or_path else None
    task = task_for(model_config, name=data_args.task)
    with context():
        dataset, collate_fn = prepare_dataset(dataset, task, processor, data_args, seed=seed)
    return TrainingData(model_config, task, processor, dataset, collate_fn)
