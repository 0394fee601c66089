"""``star-merge barrier A B``: the loss/accuracy barrier between two checkpoints, modulo permutation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .connectivity import InterpolationCurve
from ..errors import UserError

__all__ = [
    "ALIGN_METHODS",
    "ArchitectureMismatchError",
    "BarrierResult",
    "align_state_dict",
    "barrier_between",
    "check_same_architecture",
    "load_model",
    "measure_barrier",
]

ALIGN_METHODS = ("weight", "activation", "none")


class ArchitectureMismatchError(UserError):
    """Two checkpoints that must share an architecture do not."""


def load_model(ref: str, device="cpu") -> nn.Module:
    """Load a checkpoint from a local folder or a Hub id (``org/name[@revision]``; the cache when offline).

    Resolved by :func:`star_merge.hub.resolve_members` (safetensors only, never remote code).
    """
    from ..finite import check_finite
    from ..hub import resolve_members
    from ..modeling import load_checkpoint

    path = ref if os.path.isdir(ref) else resolve_members([ref], progress=False)[0].path
    model = load_checkpoint(path, device)
    check_finite(model.state_dict(), ref)  # a NaN model has no meaningful barrier
    return model


def _describe(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    return f"{getattr(config, 'model_type', '?')}/{arch}"


def check_same_architecture(model_a: nn.Module, model_b: nn.Module, names: Sequence[str] = ("A", "B")) -> None:
    """Raise ArchitectureMismatchError unless both models have the same model type and tensor shapes."""
    a, b = model_a.state_dict(), model_b.state_dict()
    type_a = getattr(getattr(model_a, "config", None), "model_type", None)
    type_b = getattr(getattr(model_b, "config", None), "model_type", None)
    problem = None
    if type_a != type_b:
        problem = f"model types {type_a!r} and {type_b!r} differ"
    elif set(a) != set(b):
        key = min(set(a) ^ set(b))
        problem = f"tensor {key!r} is in only one of them"
    else:
        for k in a:
            if a[k].shape != b[k].shape:
                problem = f"tensor {k!r} has shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
                break
    if problem:
        raise ArchitectureMismatchError(
            f"checkpoints {names[0]} ({_describe(model_a)}) and {names[1]} ({_describe(model_b)}) have different "
            f"architectures: {problem}; compare two models of one architecture"
        )


def align_state_dict(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    *,
    seed: int = 0,
    dataloader=None,
    spec=None,
    init_perm: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """B's state dict permuted into A's frame, and a JSON-ready record of the matching.

    ``method``: ``weight`` (weight matching, seeded), ``activation`` (activation matching over
    ``dataloader``; needs ``model.activation_sites()``) or ``none``.
    """
    from .. import activation_matching, apply_permutation, spec_for, weight_matching

    sd_b = {k: v.detach().cpu().clone() for k, v in model_b.state_dict().items()}
    if method == "none":
        return sd_b, {"method": "none"}
    if method not in ALIGN_METHODS:
        raise ValueError(f"unknown alignment {method!r}; use one of {', '.join(ALIGN_METHODS)}")
    spec = spec if spec is not None else spec_for(model_a)
    if method == "weight":
        sd_a = {k: v.detach().cpu() for k, v in model_a.state_dict().items()}
        res = weight_matching(spec, sd_a, sd_b, seed=seed, init_perm=init_perm)
    else:
        if not callable(getattr(model_a, "activation_sites", None)):
            raise ValueError(
                f"--align activation needs a model with activation_sites(); {_describe(model_a)} has none, "
                "use --align weight"
            )
        if dataloader is None:
            raise ValueError("activation matching needs a dataloader")
        try:
            res = activation_matching(spec, model_a, model_b, dataloader, progress=progress)
        except NotImplementedError:
            raise ValueError(
                f"{_describe(model_a)} does not define activation sites; use --align weight"
            ) from None
    return apply_permutation(spec, res.perm, sd_b), {
        "method": method,
        "objective": res.objective,
        "iterations": res.iterations,
    }


@dataclass
class BarrierResult:
    """Interpolation curves from A (t=0) to aligned B (t=1), one per split, and how B was aligned."""

    a: str
    b: str
    curves: dict[str, InterpolationCurve]
    alignment: dict[str, Any] = field(default_factory=dict)
    bn_reset: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a,
            "b": self.b,
            "alignment": self.alignment,
            "bn_reset": self.bn_reset,
            **{split: curve.to_dict() for split, curve in self.curves.items()},
        }


def measure_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    dataset,
    *,
    align: str = "weight",
    num_points: int = 11,
    seed: int = 0,
    splits: Sequence[str] = ("train", "test"),
    batch_size: int = 512,
    accelerator=None,
    names: Sequence[str] = ("A", "B"),
    progress: bool = True,
    collate_fn=None,
    task=None,
) -> BarrierResult:
    """Align B to A, then measure loss/accuracy along the line A -> B on ``splits`` of ``dataset``.

    ``dataset``: a DatasetDict with ``train`` (used for BN statistics and activation matching) and the
    ``splits``, columns = model input + ``labels``. ``model_a`` is used as the interpolation container
    (its weights are restored afterwards).
    """
    from accelerate import Accelerator

    from .engine import has_batchnorm
    from .connectivity import interpolation_curves
    from .engine import EvalData

    check_same_architecture(model_a, model_b, names)
    accelerator = accelerator or Accelerator()
    data = EvalData(dataset, accelerator, batch_size, splits, collate_fn=collate_fn)
    model_a.to(accelerator.device)
    model_b.to(accelerator.device)
    sd_a = {k: v.detach().cpu().clone() for k, v in model_a.state_dict().items()}
    sd_b, alignment = align_state_dict(
        model_a, model_b, align, seed=seed, dataloader=data.bn_loader, progress=progress
    )
    try:
        curves = interpolation_curves(model_a, sd_a, sd_b, data, num_points, progress=progress, task=task)
    finally:
        model_a.load_state_dict(sd_a)
    return BarrierResult(names[0], names[1], curves, alignment, has_batchnorm(model_a))


def barrier_between(
    checkpoint_a: str,
    checkpoint_b: str,
    data_args=None,
    **kwargs,
) -> BarrierResult:
    """Load two checkpoints (folders or Hub ids) and :func:`measure_barrier` on ``data_args`` (default MNIST-1D).

    Raw text / image columns are processed with A's tokenizer / image processor (``data_args.processor_name_or_path``
    overrides it; B's must agree), never augmented; a language model's text is tokenised into blocks."""
    import dataclasses

    from ..data import DataArguments, load_task_dataset, prepare_dataset, raw_kind, task_and_processor
    from ..processing import population_processor

    model_a = load_model(checkpoint_a)
    model_b = load_model(checkpoint_b)
    check_same_architecture(model_a, model_b, (checkpoint_a, checkpoint_b))
    data_args = dataclasses.replace(data_args or DataArguments(), augment=False)
    folders = [_folder_of(checkpoint_a), _folder_of(checkpoint_b)]
    task, processor = task_and_processor(data_args, folders[0])  # LMs: A's tokenizer
    dataset = load_task_dataset(data_args, getattr(model_a, "main_input_name", None), task=task, processor=processor)
    task.check_dataset(dataset, model_a.config)
    lm = getattr(task, "data_kind", None) == "text"
    processor, _ = population_processor(folders, data_args.processor_name_or_path,
                                        required=lm or raw_kind(dataset) is not None)
    dataset, collate_fn = prepare_dataset(dataset, task, processor, data_args)
    if lm:  # the stored splits carry one fixed masking: every model is scored on the same positions
        collate_fn = None
    kwargs.setdefault("task", task)
    kwargs.setdefault("names", (checkpoint_a, checkpoint_b))
    return measure_barrier(model_a, model_b, dataset, collate_fn=collate_fn, **kwargs)


def _folder_of(ref: str) -> str:
    if os.path.isdir(ref):
        return ref
    from ..hub import resolve_members

    (member,) = resolve_members([ref], progress=False)
    return member.path
