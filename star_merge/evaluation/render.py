"""The rendered half of a run's evaluation: report.json (merged with the trainer's keys), report.md and plots."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..rundir import PLOT_NAMES, RunPaths
from .summary import BarrierStats, RunSummary
from .verdict import headline, judge_star

__all__ = ["GROUPS", "SPLITS", "format_value", "render_markdown", "write_outputs"]

GROUPS = {
    "star_vs_held_out": "star ↔ held-out",
    "anchor_vs_held_out": "anchor ↔ held-out",
    "star_vs_anchor": "star ↔ anchor",
}
SPLITS = ("train", "test")


def write_outputs(run_dir: str, ours: dict, test_stats: Mapping[str, Any], seed: int) -> None:
    """report.json / report.md and the plots; ``test_stats``: name -> :class:`.streaming.UnitStats` (test split)."""
    from ..io import atomic_write_json, atomic_write_text
    from .plots import plot_barrier_distribution, plot_interpolation_bands, plot_reliability

    paths = RunPaths(run_dir)
    report_path = paths.report_json
    report: dict[str, Any] = {}
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
    report.update(ours)
    atomic_write_json(report_path, report)
    atomic_write_text(paths.report_md, render_markdown(report))

    from .connectivity import InterpolationCurve

    def curves(rows):
        return [{s: InterpolationCurve(r[s]["ts"], r[s]["losses"], r[s]["accuracies"]) for s in SPLITS} for r in rows]

    barriers = ours["barriers"]
    plot_interpolation_bands(
        {GROUPS[g]: curves(barriers[g]) for g in ("star_vs_held_out", "anchor_vs_held_out")},
        paths.plot("curves"),
    )
    plot_barrier_distribution(
        {s: {GROUPS[g]: [r[s]["loss_barrier"] for r in barriers[g]] for g in GROUPS} for s in SPLITS},
        paths.plot("distribution"),
        seed=seed,
    )
    shown = ["star"] + [n for n, m in ours["models"].items() if m["role"] == "anchor"][:1]
    shown += [n for n in test_stats if n not in ours["models"]]
    bins = {name: {**test_stats[name].reliability_bins(), "ece": test_stats[name].ece()} for name in shown}
    plot_reliability(bins, paths.plot("reliability"))


# ---------------------------------------------------------------------------------------------- Markdown


def format_value(value, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def pm(stats: BarrierStats, pct: bool = False) -> str:
    """``mean ± std``; one pair has no spread: ``mean (one pair)``."""
    if stats.mean is None:
        return "–"
    if stats.std is None:
        return f"{format_value(stats.mean, pct)} (one pair)"
    return f"{format_value(stats.mean, pct)} ± {format_value(stats.std, pct)}"


# The metric in the task's words: (loss, accuracy) per unit.
_WORDS = {"example": ("loss", "acc."), "token": ("per-token CE", "token acc.")}


def _path_perplexity(rows, split: str = "test") -> str:
    """Mean over pairs of the highest perplexity exp(CE) along the interpolation path."""
    import math

    peaks = [math.exp(max(r[split]["losses"])) for r in rows]
    return format_value(sum(peaks) / len(peaks)) if peaks else "–"


def _summary_section(report: Mapping[str, Any], s: RunSummary, unit: str, words: tuple[str, str]) -> list[str]:
    settings, task = report["barriers"]["settings"], report.get("task") or {}
    loss_w, acc_w = words
    lines = [
        "# Starlight evaluation report",
        "",
        (f"Barriers after weight matching, {settings['num_points']} interpolation points, "
        f"BatchNorm statistics {'recomputed at every point' if settings['bn_reset'] else 'n/a (no BatchNorm)'}; "
        f"anchor ↔ held-out pairs: {settings['pairs']} (seed {settings['seed']}). "
         "Barriers are mean ± std (n-1) over pairs; accuracy barriers in percentage points."),
        "",
        "## Summary",
        "",
        f"| pairs | n | train {loss_w} barrier | test {loss_w} barrier | train {acc_w} barrier "
        f"| test {acc_w} barrier |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group, label in GROUPS.items():
        g = s.group(group)
        lines.append(
            f"| {label} | {g.test_loss_barrier.n} | {pm(g.train_loss_barrier)} | {pm(g.test_loss_barrier)} "
            f"| {pm(g.train_accuracy_barrier, True)} | {pm(g.test_accuracy_barrier, True)} |"
        )
    if unit == "token":
        lines.insert(3, f"Task: {task.get('name')}; losses are cross-entropy per target token (nats), accuracy is "
                        "top-1 token accuracy, perplexity = exp(per-token CE).")
        lines.insert(3, "")
    return lines


def _verdict_lines(barriers: Mapping[str, Any], s: RunSummary, unit: str, loss_w: str) -> list[str]:
    lines = [
        "",
        f"- star / ordinary (anchor ↔ held-out) {headline(s)}",
        f"- **{judge_star(s).text}**",
        (f"- star test {'token ' if unit == 'token' else ''}accuracy {format_value(s.star_test_accuracy, True)}% vs "
         f"mean anchor {format_value(s.mean_anchor_test_accuracy, True)}%; test NLL {format_value(s.star_test_nll)} vs "
         f"mean anchor {format_value(s.mean_anchor_test_nll)}; train {loss_w} {format_value(s.star_train_loss)} vs mean "
         f"anchor {format_value(s.mean_anchor_train_loss)}"),
    ]
    if unit == "token":
        import math

        ppl = lambda x: format_value(math.exp(x)) if x is not None else "–"  # noqa: E731
        lines += [
            f"- test perplexity: star {ppl(s.star_test_nll)} vs mean anchor {ppl(s.mean_anchor_test_nll)} and mean "
            f"held-out {ppl(s.mean_held_out_test_nll)}",
            "- highest test perplexity along the path (mean over pairs): "
            + ", ".join(f"{GROUPS[g]} {_path_perplexity(barriers[g])}" for g in GROUPS),
        ]
    return lines


def _models_section(report: Mapping[str, Any], unit: str, loss_w: str) -> list[str]:
    lines = [
        "",
        "## Models and ensembles (test split)",
        "",
        f"| model | role | train {loss_w} | {'token ' if unit == 'token' else ''}accuracy (%) | NLL | ECE (%) | Brier "
        "| AUROC max-p | AUROC entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(n, m["role"], m["train"]["loss"], m["test"]) for n, m in report["models"].items()]
    rows += [(n, "ensemble", None, e["test"]) for n, e in report["ensembles"].items() if "test" in e]
    for name, role, train_loss, t in rows:
        lines.append(
            f"| {name} | {role} | {format_value(train_loss)} | {format_value(t['accuracy'], True)} | {format_value(t['nll'])} "
            f"| {format_value(t['ece'], True)} | {format_value(t['brier'])} | {format_value(t['auroc_max_prob'])} | {format_value(t['auroc_entropy'])} |"
        )
    for name, e in report["ensembles"].items():
        if "skipped" in e:
            lines.append(f"\n{name}: not evaluated ({e['skipped']})")
    return lines


def _pairs_section(barriers: Mapping[str, Any], words: tuple[str, str]) -> list[str]:
    loss_w, acc_w = words
    lines = [
        "",
        "## Every pair",
        "",
        f"| pairs | A (t=0) | B (t=1, aligned) | train {loss_w} barrier | test {loss_w} barrier | test {acc_w} barrier |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group, label in GROUPS.items():
        for r in barriers[group]:
            lines.append(
                f"| {label} | {r['a']} | {r['b']} | {format_value(r['train']['loss_barrier'])} "
                f"| {format_value(r['test']['loss_barrier'])} | {format_value(r['test']['accuracy_barrier'], True)} |"
            )
    return lines


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: summary, per-model and ensemble metrics, every pair's barriers, the plots."""
    s, barriers = RunSummary.from_report(report), report["barriers"]
    unit = (report.get("task") or {}).get("unit", "example")
    words = _WORDS.get(unit, _WORDS["example"])
    lines = _summary_section(report, s, unit, words)
    lines += _verdict_lines(barriers, s, unit, words[0])
    lines += _models_section(report, unit, words[0])
    lines += _pairs_section(barriers, words)
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({name})" for key, name in PLOT_NAMES.items()]
    return "\n".join(lines) + "\n"
