"""The typed summary of a run's evaluation, read from report.json by report.md and the model card.

:func:`star_merge.evaluation.report.summarize_barriers` and ``evaluate_run`` write ``report["summary"]``;
:meth:`RunSummary.from_report` is the one reader of it (no string key paths elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BarrierStats", "GroupSummary", "RunSummary", "finite_number"]

GROUP_NAMES = ("star_vs_held_out", "anchor_vs_held_out", "star_vs_anchor")


def finite_number(value: Any) -> float | None:
    """A finite float, or None for anything else (missing, NaN, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class BarrierStats:
    """Mean ± sample std over the pairs of one group (``n`` pairs)."""

    mean: float | None = None
    std: float | None = None
    n: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "BarrierStats":
        d = d or {}
        return cls(finite_number(d.get("mean")), finite_number(d.get("std")), int(d.get("n") or 0))


@dataclass
class GroupSummary:
    """Loss and accuracy barriers of one pair group (e.g. star ↔ held-out) on train and test."""

    train_loss_barrier: BarrierStats = field(default_factory=BarrierStats)
    test_loss_barrier: BarrierStats = field(default_factory=BarrierStats)
    train_accuracy_barrier: BarrierStats = field(default_factory=BarrierStats)
    test_accuracy_barrier: BarrierStats = field(default_factory=BarrierStats)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "GroupSummary":
        d = d or {}
        return cls(**{name: BarrierStats.from_dict(d.get(name)) for name in cls.__dataclass_fields__})


@dataclass
class RunSummary:
    """What report.md's summary and the model card's metrics show."""

    groups: dict[str, GroupSummary] = field(default_factory=dict)
    loss_barrier_ratio: dict[str, float | None] = field(default_factory=dict)
    star_test_accuracy: float | None = None
    star_test_nll: float | None = None
    star_test_ece: float | None = None
    star_train_loss: float | None = None
    mean_anchor_test_accuracy: float | None = None
    mean_anchor_test_nll: float | None = None
    mean_anchor_train_loss: float | None = None
    mean_held_out_test_accuracy: float | None = None
    mean_held_out_test_nll: float | None = None
    deep_ensemble_test_accuracy: float | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any]) -> "RunSummary":
        s = report.get("summary") or {}
        star = ((report.get("models") or {}).get("star") or {}).get("test") or {}
        return cls(
            groups={g: GroupSummary.from_dict(s.get(g)) for g in GROUP_NAMES},
            loss_barrier_ratio={k: finite_number(v) for k, v in (s.get("loss_barrier_ratio") or {}).items()},
            star_test_accuracy=finite_number(s.get("star_test_accuracy")),
            star_test_nll=finite_number(s.get("star_test_nll")),
            star_test_ece=finite_number(star.get("ece")),
            star_train_loss=finite_number(s.get("star_train_loss")),
            mean_anchor_test_accuracy=finite_number(s.get("mean_anchor_test_accuracy")),
            mean_anchor_test_nll=finite_number(s.get("mean_anchor_test_nll")),
            mean_anchor_train_loss=finite_number(s.get("mean_anchor_train_loss")),
            mean_held_out_test_accuracy=finite_number(s.get("mean_held_out_test_accuracy")),
            mean_held_out_test_nll=finite_number(s.get("mean_held_out_test_nll")),
            deep_ensemble_test_accuracy=finite_number(s.get("deep_ensemble_test_accuracy")),
        )

    def group(self, name: str) -> GroupSummary:
        return self.groups.get(name) or GroupSummary()
