"""Evaluation plots (matplotlib, Agg canvas, no global pyplot state): curves, barrier distributions, reliability."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "plot_barrier_curves",
    "plot_barrier_distribution",
    "plot_interpolation_bands",
    "plot_reliability",
    "save_figure",
]

GROUP_COLORS = {
    "star ↔ held-out": "#d95f02",
    "anchor ↔ held-out": "#1b9e77",
    "star ↔ anchor": "#7570b3",
}
_CYCLE = ["#d95f02", "#1b9e77", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]
SPLIT_STYLES = {"train": "-", "test": "--"}


def _figure(nrows: int, ncols: int, width: float, height: float, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Render ``fig`` as PNG into a temp file beside ``path``, then rename it into place."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _color(label: str, i: int) -> str:
    return GROUP_COLORS.get(label, _CYCLE[i % len(_CYCLE)])


def plot_barrier_curves(result, path: str) -> str:
    """Loss and accuracy along A -> B (one line per split, dashed chords) for one ``BarrierResult``."""
    fig, axes = _figure(1, 2, 9.0, 3.6)
    ax_loss, ax_acc = axes[0]
    for i, (split, curve) in enumerate(result.curves.items()):
        color = _CYCLE[i % len(_CYCLE)]
        ts = np.asarray(curve.ts)
        for ax, values, barrier, fmt in (
            (ax_loss, np.asarray(curve.losses), curve.loss_barrier, "{:.3f}"),
            (ax_acc, 100 * np.asarray(curve.accuracies), 100 * curve.accuracy_barrier, "{:.1f} pts"),
        ):
            ax.plot(ts, values, marker="o", ms=3.5, color=color, label=f"{split} (barrier {fmt.format(barrier)})")
            ax.plot([0, 1], [values[0], values[-1]], ls=":", color=color, lw=1)
    align = result.alignment.get("method", "none")
    for ax, ylabel in ((ax_loss, "cross-entropy loss"), (ax_acc, "accuracy (%)")):
        ax.set_xlabel("interpolation t  (A at 0, B at 1)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    ax_loss.set_title("loss along the path")
    ax_acc.set_title("accuracy along the path")
    fig.suptitle(f"{os.path.basename(str(result.a).rstrip('/'))} ↔ {os.path.basename(str(result.b).rstrip('/'))}"
                 f"  (B aligned: {align}; dotted: chord)", fontsize=10)
    return save_figure(fig, path)


def plot_interpolation_bands(
    groups: Mapping[str, Sequence], path: str, splits: Sequence[str] = ("train", "test"), metric: str = "losses"
) -> str:
    """Mean curve with a ±1 std band per group of ``InterpolationCurve`` dicts (``{split: curve}``), one panel per split."""
    fig, axes = _figure(1, len(splits), 4.6 * len(splits), 3.6)
    ylabel = "cross-entropy loss" if metric == "losses" else "accuracy (%)"
    scale = 1.0 if metric == "losses" else 100.0
    for ax, split in zip(axes[0], splits):
        for i, (label, curves) in enumerate(groups.items()):
            if not curves:
                continue
            values = scale * np.asarray([getattr(c[split], metric) for c in curves], dtype=float)
            ts = np.asarray(curves[0][split].ts)
            mean, std = values.mean(0), values.std(0)
            color = _color(label, i)
            ax.plot(ts, mean, color=color, lw=2, label=f"{label} (n={len(curves)})")
            ax.fill_between(ts, mean - std, mean + std, color=color, alpha=0.2, lw=0)
        ax.set_title(f"{split} split")
        ax.set_xlabel("interpolation t  (star / anchor at 0, other model at 1)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8)
    fig.suptitle("Interpolation curves after weight matching (mean ± 1 std)", fontsize=11)
    return save_figure(fig, path)


def plot_barrier_distribution(
    barriers: Mapping[str, Mapping[str, Sequence[float]]], path: str, seed: int = 0
) -> str:
    """Box plot plus jittered points of loss barriers: ``barriers[split][group] -> values``, one panel per split.

    The horizontal jitter of the points is drawn from ``seed``.
    """
    rng = np.random.default_rng(seed)
    splits = list(barriers)
    fig, axes = _figure(1, len(splits), 4.4 * len(splits), 3.8)
    for ax, split in zip(axes[0], splits):
        labels = [g for g, v in barriers[split].items() if len(v)]
        data = [np.asarray(barriers[split][g], dtype=float) for g in labels]
        if data:
            box = ax.boxplot(data, widths=0.5, patch_artist=True, showfliers=False)
            for i, (patch, label) in enumerate(zip(box["boxes"], labels)):
                patch.set_facecolor(_color(label, i))
                patch.set_alpha(0.25)
            for i, (values, label) in enumerate(zip(data, labels)):
                x = i + 1 + rng.uniform(-0.12, 0.12, size=len(values))
                ax.scatter(x, values, s=16, color=_color(label, i), zorder=3, edgecolor="white", lw=0.5)
            ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
        ax.set_title(f"{split} loss barrier")
        ax.set_ylabel("loss barrier (nats)")
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Loss barriers after weight matching", fontsize=11)
    return save_figure(fig, path)


def plot_reliability(bins_by_model: Mapping[str, Mapping[str, list]], path: str) -> str:
    """Reliability diagram (accuracy vs confidence per bin) and the share of samples per bin, per model.

    ``bins_by_model[name]`` is :func:`star_merge.metrics.reliability_bins` output, optionally with an
    ``"ece"`` entry shown in the legend.
    """
    fig, axes = _figure(2, 1, 5.2, 5.6, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax, ax_count = axes[0, 0], axes[1, 0]
    ax.plot([0, 1], [0, 1], color="black", ls=":", lw=1, label="perfect calibration")
    for i, (name, bins) in enumerate(bins_by_model.items()):
        color = _CYCLE[i % len(_CYCLE)]
        keep = [j for j, c in enumerate(bins["confidence"]) if c is not None]
        conf = [bins["confidence"][j] for j in keep]
        acc = [bins["accuracy"][j] for j in keep]
        ece = bins.get("ece")
        label = f"{name} (ECE {100 * ece:.2f}%)" if ece is not None else name
        ax.plot(conf, acc, marker="o", ms=4, color=color, label=label)
        edges = np.asarray(bins["edges"])
        share = np.asarray(bins["count"], dtype=float) / max(1, sum(bins["count"]))
        ax_count.stairs(share, edges, color=color, lw=1.5)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram ({len(next(iter(bins_by_model.values()))['count'])} bins, test split)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax_count.set_xlabel("confidence (max probability)")
    ax_count.set_ylabel("share of samples")
    ax_count.grid(alpha=0.3)
    return save_figure(fig, path)
