"""Evaluation: barriers between checkpoints, run-directory reports, calibration metrics, plots.

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
from .predict import EvalData, Predictions, interpolation_curves, predict
from .report import evaluate_run, render_markdown, select_pairs, summarize_barriers

__all__ = [
    "ALIGN_METHODS",
    "ArchitectureMismatchError",
    "BarrierResult",
    "EvalData",
    "Predictions",
    "align_state_dict",
    "barrier_between",
    "check_same_architecture",
    "evaluate_run",
    "interpolation_curves",
    "load_model",
    "measure_barrier",
    "predict",
    "render_markdown",
    "select_pairs",
    "summarize_barriers",
]
