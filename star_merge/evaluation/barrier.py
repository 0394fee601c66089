"""``star-merge barrier A B``: the loss/accuracy barrier between two checkpoints, modulo permutation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..batchnorm import has_batchnorm
from ..matching.align import align as align_models
from ..matching.align import in_symmetry_form
from ..modeling import check_same_architecture
from .connectivity import InterpolationCurve, interpolation_curves
from .engine import EvalData

__all__ = ["BarrierResult", "barrier_between", "measure_barrier"]


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
    symmetry: str = "permutation",
) -> BarrierResult:
    """Align B to A, then measure loss/accuracy along the line A -> B on ``splits`` of ``dataset``.

    ``dataset``: a DatasetDict with ``train`` (used for BN statistics and activation matching) and the
    ``splits``, columns = model input + ``labels``. ``model_a`` is used as the interpolation container
    (its weights are restored afterwards). ``symmetry="orthogonal"``: both models are folded first (the same
    functions; the line runs between the folded forms) and B is aligned with orthogonal maps where allowed.
    """
    from accelerate import Accelerator

    check_same_architecture(model_a, model_b, names)
    model_a, model_b = in_symmetry_form(model_a, symmetry), in_symmetry_form(model_b, symmetry)
    accelerator = accelerator or Accelerator()
    data = EvalData(dataset, accelerator, batch_size, splits, collate_fn=collate_fn)
    model_a.to(accelerator.device)
    model_b.to(accelerator.device)
    sd_a = {k: v.detach().cpu().clone() for k, v in model_a.state_dict().items()}
    sd_b, record = align_models(None, model_a, model_b, align, seed=seed, data=data.bn_loader, progress=progress,
                                symmetry=symmetry)
    try:
        curves = interpolation_curves(model_a, sd_a, sd_b, data, num_points, progress=progress, task=task)
    finally:
        model_a.load_state_dict(sd_a)
    return BarrierResult(names[0], names[1], curves, record.to_dict(), has_batchnorm(model_a))


def barrier_between(
    checkpoint_a: str,
    checkpoint_b: str,
    data_args=None,
    **kwargs,
) -> BarrierResult:
    """Load two checkpoints (folders or Hub ids) and :func:`measure_barrier` on ``data_args`` (default MNIST-1D).

    Raw text / image columns are processed with A's tokenizer / image processor (``data_args.processor_name_or_path``
    overrides it; B's must agree), never augmented; a language model's text is tokenised into blocks."""
    from ..data import DataArguments
    from ..references import load_reference
    from ..population_data import load_population_data

    model_a, folder_a = load_reference(checkpoint_a)
    model_b, folder_b = load_reference(checkpoint_b)
    check_same_architecture(model_a, model_b, (checkpoint_a, checkpoint_b))
    data = load_population_data(data_args or DataArguments(), [folder_a, folder_b], evaluation=True,
                                model_input_name=getattr(model_a, "main_input_name", None))
    kwargs.setdefault("task", data.task)
    kwargs.setdefault("names", (checkpoint_a, checkpoint_b))
    return measure_barrier(model_a, model_b, data.dataset, collate_fn=data.collate_fn, **kwargs)
