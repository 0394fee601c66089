"""Evaluation: the one engine (forward over a loader, BN reset, predictions), interpolation curves and barriers,
run-directory reports, calibration metrics, plots.

``star-merge barrier A B`` runs :func:`barrier_between` (:mod:`.barrier`); ``star-merge evaluate RUN_DIR`` runs
:func:`evaluate_run` (:mod:`.report`, also called by ``recipes/star.py`` at the end of a run); their handlers are
in :mod:`star_merge.commands`.
"""

from ..batchnorm import has_batchnorm, reset_bn_stats
from ..matching.align import ALIGN_METHODS
from ..modeling import ArchitectureMismatchError, check_same_architecture
from .barrier import BarrierResult, barrier_between, measure_barrier
from .connectivity import (
    InterpolationCurve,
    accuracy_barrier,
    interpolate_state_dicts,
    interpolation_curve,
    interpolation_curves,
    loss_barrier,
)
from .engine import EvalData, Predictions, evaluate_loss_accuracy, forward_loader, predict
from .report import evaluate_run, render_markdown, select_pairs, summarize_barriers

__all__ = [
    "ALIGN_METHODS",
    "ArchitectureMismatchError",
    "BarrierResult",
    "EvalData",
    "InterpolationCurve",
    "Predictions",
    "accuracy_barrier",
    "barrier_between",
    "check_same_architecture",
    "evaluate_loss_accuracy",
    "evaluate_run",
    "forward_loader",
    "has_batchnorm",
    "interpolate_state_dicts",
    "interpolation_curve",
    "interpolation_curves",
    "loss_barrier",
    "measure_barrier",
    "predict",
    "render_markdown",
    "reset_bn_stats",
    "select_pairs",
    "summarize_barriers",
]
