"""The task seam: everything that depends on what the population's models do goes through a :class:`Task`.

A task is derived from the anchors' ``config.architectures[0]`` (or named with ``--task``). The Starlight step,
population training, BatchNorm resets, the evaluation engine and the exports call the task; none of them knows
about input columns or label shapes. A new kind of population is one new task module plus its tests.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Mapping

import torch

from ..discovery import import_submodules
from ..errors import UserError
from .labels import LABEL_KEYS, check_labels

__all__ = ["BATCH_CONTRACT", "Task", "TaskError", "as_batch", "register_task", "register_pipeline_tag", "pipeline_tag_for", "task_for",
           "available_tasks", "task_of", "LABEL_KEYS", "STANDARD_INPUTS"]


_TASKS: dict[str, "Task"] = {}
_SUFFIXES: list[tuple[str, str]] = []  # (architecture suffix, task name)
_ARCHITECTURES: dict[str, str] = {}  # exact architecture name -> task name
_PIPELINE_TAGS: list[tuple[str, str]] = []  # (architecture suffix, Hub pipeline tag) where the task's tag is not it


class TaskError(UserError):
    """No task fits a model (or an unknown ``--task`` name)."""


class Task:
    """Base class. Subclasses set ``name``, ``pipeline_tag``, ``bma_head`` and implement loss / predict."""

    name: str = ""
    pipeline_tag: str | None = None
    bma_head: str | None = None  # the star-domain BMA head class that wraps members of this task
    data_kind: str = "labelled"  # "labelled": (input, label) columns; "text": raw text tokenised by prepare()

    # ------------------------------------------------------------------ data
    def prepare(self, dataset_dict, processor=None, data_args=None, seed: int = 0):
        """Turn raw splits into model-ready ones (tokenise, process images, ...). Model-ready splits (the
        built-in datasets, pre-processed columns) are returned as they are."""
        return dataset_dict

    def check_dataset(self, dataset, config) -> None:
        """Raise a one-line DatasetError when the prepared dataset does not fit the model (default: labels)."""
        check_labels(dataset, config.num_labels)

    @property
    def collator(self) -> Callable | None:
        """Batch collation for dataloaders; ``None`` is torch's default collate."""
        return None

    def collator_for(self, processor=None, dataset_dict=None) -> Callable | None:
        """The collator for ``dataset_dict`` as :meth:`prepare` returned it (e.g. padding with ``processor``)."""
        return self.collator

    # ------------------------------------------------------------------ model calls
    def model_inputs(self, model, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch entries the model's ``forward`` accepts, targets left out (like Trainer's
        ``remove_unused_columns``).

        Named ``forward`` parameters count; a ``forward(**kwargs)`` (e.g. the BMA wrapper, which passes its inputs
        on to the members) also accepts the model's ``main_input_name`` and the usual Hugging Face input names.
        """
        accepted = _accepted_inputs(type(model)) | {getattr(model, "main_input_name", "input_ids")}
        return {k: v for k, v in batch.items() if k in accepted and k not in LABEL_KEYS}

    def targets(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "labels" not in batch:
            raise TaskError(f"the batch has no labels (keys: {sorted(batch)}); {BATCH_CONTRACT}")
        return batch["labels"]

    def loss(self, model, batch: Mapping[str, Any]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, model, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """``(log_probs [U, C], targets [U])`` flattened over the batch's units (examples or tokens)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# Inputs a ``forward(**kwargs)`` is assumed to take (the names transformers' models and processors use).
STANDARD_INPUTS = frozenset({
    "input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds", "pixel_values", "pixel_mask",
    "input_values", "input_features", "decoder_input_ids", "decoder_attention_mask",
})


@functools.lru_cache(maxsize=None)
def _accepted_inputs(cls) -> frozenset[str]:
    try:
        params = list(inspect.signature(cls.forward).parameters.values())
    except (AttributeError, TypeError, ValueError):
        return STANDARD_INPUTS
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = frozenset(p.name for p in params if p.kind not in skip) - {"self"}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        named |= STANDARD_INPUTS
    return named


#: What the Python API reads from a dataloader (the one line said when a batch is none of these).
BATCH_CONTRACT = ("give batches as dicts of the model's inputs with `labels` (or `label`), or as (inputs, labels) "
                  "tuples, e.g. a TensorDataset(x, y)")


def _first_input(model) -> str:
    """The name a bare input tensor goes by: ``main_input_name``, else ``forward``'s first parameter."""
    name = getattr(model, "main_input_name", None)
    if isinstance(name, str):
        return name
    try:
        params = [p for p in inspect.signature(type(model).forward).parameters if p != "self"]
    except (AttributeError, TypeError, ValueError):
        params = []
    return params[0] if params else "input_ids"


def as_batch(batch, model) -> Mapping[str, Any]:
    """``batch`` as every task reads it: a mapping of model inputs and ``labels``. Accepted: such a mapping, one
    with ``label`` / ``label_ids`` instead of ``labels``, and ``(inputs, labels)`` where ``inputs`` is a tensor (the
    model's main input) or a mapping of inputs. Anything else is a one-line :class:`TaskError`."""
    if isinstance(batch, Mapping):
        if "labels" in batch:
            return batch
        key = next((k for k in LABEL_KEYS if k in batch), None)
        if key is None:
            return batch  # a causal LM's targets are its inputs; a classifier says what it misses (targets)
        return {**{k: v for k, v in batch.items() if k != key}, "labels": batch[key]}
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, labels = batch
        if isinstance(inputs, Mapping):
            return {**inputs, "labels": labels}
        if isinstance(inputs, torch.Tensor):
            return {_first_input(model): inputs, "labels": labels}
    what = f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
    raise TaskError(f"cannot read a batch that is {what}; {BATCH_CONTRACT}")


def register_task(task: Task, suffixes: tuple[str, ...] = (), architectures: tuple[str, ...] = ()) -> Task:
    """Register ``task`` under ``task.name``, for architectures ending in ``suffixes`` or named exactly."""
    _TASKS[task.name] = task
    _SUFFIXES.extend((s, task.name) for s in suffixes)
    _ARCHITECTURES.update({a: task.name for a in architectures})
    return task


def register_pipeline_tag(suffix: str, tag: str) -> None:
    """The Hub pipeline tag of architectures ending in ``suffix``, where it is not their task's (or no task fits)."""
    _PIPELINE_TAGS.append((suffix, tag))


def pipeline_tag_for(architecture: str | None) -> str | None:
    """The Hub pipeline tag of an architecture, from the one table of architecture suffixes (None if unknown)."""
    _load_builtin_tasks()
    arch = architecture or ""
    for suffix, tag in _PIPELINE_TAGS:
        if arch.endswith(suffix):
            return tag
    return next((_TASKS[name].pipeline_tag for suffix, name in _SUFFIXES if arch.endswith(suffix)), None)


def available_tasks() -> list[str]:
    _load_builtin_tasks()
    return sorted(_TASKS)


def _load_builtin_tasks() -> None:
    """Import every task module of this folder; importing one registers its tasks."""
    import_submodules(__package__, __file__, skip=("base", "labels"))


def task_for(config_or_model=None, name: str | None = None) -> Task:
    """The task of a model (or config), from ``config.architectures[0]``; ``name`` overrides it (``--task``)."""
    _load_builtin_tasks()
    if name is not None:
        if name not in _TASKS:
            raise TaskError(f"unknown task {name!r}; choose one of {', '.join(sorted(_TASKS))} with --task")
        return _TASKS[name]
    config = getattr(config_or_model, "config", config_or_model)
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch is None and isinstance(config_or_model, torch.nn.Module):
        arch = type(config_or_model).__name__
    if arch in _ARCHITECTURES:
        return _TASKS[_ARCHITECTURES[arch]]
    for suffix, task in _SUFFIXES:
        if arch is not None and arch.endswith(suffix):
            return _TASKS[task]
    if arch is None and getattr(config, "model_type", None) is not None:
        # A config built from fields (no architectures): the class star-merge builds for it decides.
        from ..modeling import model_class_for

        try:
            arch = model_class_for(config).__name__
        except ValueError:
            arch = None
        if arch is not None:
            return task_for(_Named(arch))
    raise TaskError(
        f"cannot tell the task of architecture {arch!r} (model_type {getattr(config, 'model_type', None)!r}); "
        f"name it with --task ({', '.join(sorted(_TASKS))})"
    )


def task_of(model, task: Task | None = None) -> Task:
    """``task``, else the model's (a plain ``nn.Module`` without an HF config is scored as a classifier)."""
    if task is not None:
        return task
    if getattr(model, "config", None) is None:
        return task_for(name="sequence-classification")
    return task_for(model)


class _Named:  # a stand-in config naming one architecture
    def __init__(self, arch: str):
        self.architectures = [arch]
