"""A run's evaluation, logged to the trackers its training logged to (``report_to``).

After ``evaluate_run`` the pipeline logs, at the training's last step, beside the per-epoch ``epoch/*`` metrics:

- ``eval/<pairs>/<split>_<loss|accuracy>_barrier``: the mean barrier of each pair group (``star_vs_held_out``,
  ``anchor_vs_held_out``, ``star_vs_anchor``), ``eval/loss_barrier_ratio/<split>`` (the paper's metric on
  ``train``), the star's and the anchors' mean test accuracy / NLL, ``eval/star_is_good`` (the verdict, 1 or 0)
  and each ensemble's (deep ensemble, BMA) test accuracy, NLL and ECE;
- on TensorBoard, each group's mean interpolation curve as ``eval_curve/<pairs>/<split>_loss`` with the step
  ``round(100 t)`` (t = 0 … 1 on the x axis);
- on TensorBoard and Weights & Biases, the report's plots (interpolation curves, barrier distribution,
  reliability) as images ``eval_plots/<name>``.

Every value comes from report.json as written, so what a dashboard shows is what the report says.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from .verdict import judge_star

__all__ = ["PAIR_GROUPS", "log_evaluation", "mean_curves", "report_scalars"]

PAIR_GROUPS = ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor")
PLOTS = {"interpolation_curves": "interpolation_curves.png", "barrier_distribution": "barrier_distribution.png",
         "reliability": "reliability.png"}
_SUMMARY_SCALARS = ("star_test_accuracy", "star_test_nll", "mean_anchor_test_accuracy", "mean_anchor_test_nll")
_ENSEMBLE_METRICS = ("accuracy", "nll", "ece")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def report_scalars(report: Mapping[str, Any]) -> dict[str, float]:
    """The report's headline numbers as flat tracker scalars (see the module docstring for the names)."""
    summary = report.get("summary") or {}
    out: dict[str, float] = {}
    for group in PAIR_GROUPS:
        for key, stats in (summary.get(group) or {}).items():
            if isinstance(stats, Mapping) and _number(stats.get("mean")):
                out[f"eval/{group}/{key}"] = float(stats["mean"])
    for split, value in (summary.get("loss_barrier_ratio") or {}).items():
        if _number(value):
            out[f"eval/loss_barrier_ratio/{split}"] = float(value)
    for key in _SUMMARY_SCALARS:
        if _number(summary.get(key)):
            out[f"eval/{key}"] = float(summary[key])
    if summary:
        out["eval/star_is_good"] = float(judge_star(summary).good)
    for name, ensemble in (report.get("ensembles") or {}).items():
        test = ensemble.get("test") or {}
        for metric in _ENSEMBLE_METRICS:
            if _number(test.get(metric)):
                out[f"eval/{name}/test_{metric}"] = float(test[metric])
    return out


def mean_curves(report: Mapping[str, Any]) -> dict[str, list[tuple[float, float]]]:
    """``eval_curve/<pairs>/<split>_loss`` -> ``[(t, mean loss over the group's pairs at t)]``."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for group in PAIR_GROUPS:
        pairs = (report.get("barriers") or {}).get(group) or []
        for split in ("train", "test"):
            rows = [p[split] for p in pairs if isinstance(p.get(split), Mapping)]
            if not rows:
                continue
            ts = rows[0]["ts"]
            means = [sum(r["losses"][i] for r in rows) / len(rows) for i in range(len(ts))]
            curves[f"eval_curve/{group}/{split}_loss"] = list(zip(ts, means))
    return curves


def _plot_images(run_dir: str) -> dict:
    import matplotlib.image

    images = {}
    for name, filename in PLOTS.items():
        path = os.path.join(run_dir, filename)
        if os.path.isfile(path):
            images[f"eval_plots/{name}"] = matplotlib.image.imread(path)[..., :3]  # H x W x RGB in [0, 1]
    return images


def log_evaluation(accelerator, report: Mapping[str, Any], run_dir: str, step: int | None = None) -> None:
    """Log ``report`` (and ``run_dir``'s plots) to ``accelerator``'s trackers at ``step``; nothing without trackers.
    Call it on every process: Accelerate logs on the main process only."""
    trackers = list(getattr(accelerator, "trackers", None) or [])
    if not trackers or not accelerator.is_main_process:
        return
    accelerator.log(report_scalars(report), step=step)
    curves = mean_curves(report)
    images = _plot_images(run_dir)
    for tracker in trackers:
        if tracker.name == "tensorboard":
            writer = tracker.writer
            for tag, points in curves.items():
                for t, value in points:
                    writer.add_scalar(tag, value, global_step=int(round(100 * t)))
            if images:
                tracker.log_images({k: v[None] for k, v in images.items()}, step=step, dataformats="NHWC")
            writer.flush()
        elif tracker.name == "wandb" and images:
            tracker.log_images({k: [v] for k, v in images.items()}, step=step)
