"""Judging a star from a run's summary: is it a good solution, and the headline barrier ratios in order.

A star that is itself a poor model shows low barriers for a bad reason (the chord from a high-loss
endpoint is high, so the path stays under it). So a report states, computed from the numbers:

- the paper's metric first: the **train-loss** barrier ratio star ↔ held-out / anchor ↔ held-out,
  with the test-loss ratio beside it (:func:`headline`);
- whether the star is a good solution (:func:`judge_star`): test accuracy ≥ the anchors' mean − 1
  percentage point and test NLL ≤ the anchors' mean NLL, or which criterion fails and by how much.

Pure functions over a :class:`~star_merge.evaluation.summary.RunSummary` or the ``summary`` dict of
``report.json`` (see docs/run_directory.md); no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .summary import RunSummary
from ..errors import UserError

__all__ = ["ACCURACY_TOLERANCE", "Verdict", "headline", "judge_star"]

# The star may trail the anchors' mean test accuracy by at most this much (a fraction: 0.01 = 1 point).
ACCURACY_TOLERANCE = 0.01


@dataclass(frozen=True)
class Verdict:
    """``good``: every criterion holds; ``reasons``: one line per failing (or unmeasured) criterion."""

    good: bool
    reasons: list[str] = field(default_factory=list)
    text: str = ""


def _typed(summary: RunSummary | Mapping[str, Any]) -> RunSummary:
    return summary if isinstance(summary, RunSummary) else RunSummary.from_report({"summary": summary})


def judge_star(summary: RunSummary | Mapping[str, Any], accuracy_tolerance: float = ACCURACY_TOLERANCE) -> Verdict:
    """Whether the star is a good solution: accuracy ≥ anchors' mean − tolerance and NLL ≤ anchors' mean NLL.

    ``summary`` (a RunSummary or report.json's ``summary`` dict) holds the star's and the anchors' mean test
    accuracy (fractions) and NLL. A criterion whose numbers are missing fails with a reason saying so: a star
    is never called good on numbers that were not measured.
    """
    if accuracy_tolerance < 0:
        raise UserError(f"accuracy_tolerance must be >= 0, got {accuracy_tolerance}")
    s = _typed(summary)
    acc, anchor_acc = s.star_test_accuracy, s.mean_anchor_test_accuracy
    nll, anchor_nll = s.star_test_nll, s.mean_anchor_test_nll
    tol_pts = 100 * accuracy_tolerance
    reasons = []
    if acc is None or anchor_acc is None:
        reasons.append("test accuracy of the star or of the anchors was not measured")
    elif acc < anchor_acc - accuracy_tolerance:
        reasons.append(
            f"test accuracy {100 * acc:.2f}% is {100 * (anchor_acc - acc):.2f} pts below the anchors' mean "
            f"{100 * anchor_acc:.2f}% (allowed: {tol_pts:g} pt)"
        )
    if nll is None or anchor_nll is None:
        reasons.append("test NLL of the star or of the anchors was not measured")
    elif nll > anchor_nll:
        reasons.append(f"test NLL {nll:.4f} is above the anchors' mean {anchor_nll:.4f}")
    if reasons:
        text = "star is NOT a good solution: " + "; ".join(reasons) + " (its low barriers may be low for a bad reason)"
        return Verdict(False, reasons, text)
    text = (
        f"star is a good solution: test accuracy {100 * acc:.2f}% ≥ anchors' mean {100 * anchor_acc:.2f}% − {tol_pts:g} pt "
        f"and test NLL {nll:.4f} ≤ anchors' mean {anchor_nll:.4f}"
    )
    return Verdict(True, [], text)


def headline(summary: RunSummary | Mapping[str, Any]) -> str:
    """One line: the train-loss barrier ratio (the paper's metric) first, the test-loss ratio beside it."""
    s = _typed(summary)
    parts = []
    for split, label in (("train", "train-loss barrier ratio (paper's metric)"), ("test", "test-loss barrier ratio")):
        r = s.loss_barrier_ratio.get(split)
        star = getattr(s.group("star_vs_held_out"), f"{split}_loss_barrier").mean
        ordinary = getattr(s.group("anchor_vs_held_out"), f"{split}_loss_barrier").mean
        value = "–" if r is None else f"{r:.3f}"
        detail = f" ({star:.4f} star ↔ held-out / {ordinary:.4f} anchor ↔ held-out)" \
            if star is not None and ordinary is not None else ""
        parts.append(f"{label} {value}{detail}")
    return "; ".join(parts)
