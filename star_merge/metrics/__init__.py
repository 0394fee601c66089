"""star-merge's calibration metrics as Hugging Face ``evaluate`` modules, shipped inside the package.

``evaluate.load(star_merge.metric_path("ece"))`` loads one offline (a local script: no Hub); each is a
self-contained script (numpy only) that can also be published to the Hub as a metric Space. Names: ``nll``,
``ece``, ``brier``, ``confidence_auroc``, and ``accuracy`` (of predicted labels: what
``evaluate.evaluator(task)`` feeds a metric, offline). Inputs are predicted probabilities, not arg-max labels:
``compute(predictions=probs [N, C], references=labels [N])``; the ``"tokens"`` config takes one
``[T, V]`` row per sequence with ``[T]`` targets (``-100`` ignored), the per-token variants of a language model.
The report's numbers (star_merge.evaluation.metrics) are tested equal to these to 1e-6.
"""

from __future__ import annotations

import os

__all__ = ["METRIC_NAMES", "metric_path"]

METRIC_NAMES = ("nll", "ece", "brier", "confidence_auroc", "accuracy")


def metric_path(name: str) -> str:
    """The local path of star-merge's ``evaluate`` module ``name`` (for ``evaluate.load``)."""
    if name not in METRIC_NAMES:
        from ..errors import UserError

        raise UserError(f"no star-merge metric {name!r}; choose one of {', '.join(METRIC_NAMES)}")
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
