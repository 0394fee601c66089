"""Evaluation: the one engine (forward over a loader, BN reset, predictions), interpolation curves and barriers,
run-directory reports, calibration metrics, plots.

``star-merge barrier A B`` is :mod:`.barrier`; ``star-merge evaluate RUN_DIR`` is :mod:`.report`
(:func:`evaluate_run`, also called by ``recipes/star.py`` at the end of a run).
"""

from .barrier import (
    ALIGN_METHODS,
    ArchitectureMismatchError,
    BarrierResult,
    align_state_dict,
    barrier_between,
    check_same_architecture,
    load_model,
    measure_barrier,
)
from .connectivity import (
    InterpolationCurve,
    accuracy_barrier,
    interpolate_state_dicts,
    interpolation_curve,
    interpolation_curves,
    loss_barrier,
)
from .engine import EvalData, Predictions, evaluate_loss_accuracy, forward_loader, has_batchnorm, predict, reset_bn_stats
from .report import evaluate_run, render_markdown, select_pairs, summarize_barriers

__all__ = [
    "ALIGN_METHODS",
    "ArchitectureMismatchError",
    "BarrierResult",
    "EvalData",
    "InterpolationCurve",
    "Predictions",
    "accuracy_barrier",
    "align_state_dict",
    "barrier_between",
    "check_same_architecture",
    "evaluate_loss_accuracy",
    "evaluate_run",
    "forward_loader",
    "has_batchnorm",
    "interpolate_state_dicts",
    "interpolation_curve",
    "interpolation_curves",
    "load_model",
    "loss_barrier",
    "measure_barrier",
    "predict",
    "render_markdown",
    "reset_bn_stats",
    "select_pairs",
    "summarize_barriers",
]
