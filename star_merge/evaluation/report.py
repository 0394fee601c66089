"""``star-merge evaluate RUN_DIR``: every barrier and metric of a Starlight run -> report.json, report.md, plots.

What is measured (all barriers after weight matching, BN statistics recomputed per point when the
architecture has BatchNorm, on the train and test splits):

- star ↔ held-out: each held-out model aligned to the star;
- anchor ↔ held-out: each (anchor, held-out) pair, or a seeded sample of ``pairs`` of them, held-out
  aligned to the anchor — the "ordinary" baseline;
- star ↔ anchor: each anchor aligned to the star (warm-started from the run's stored permutations).

Per model (star, anchors, held-out) and per ensemble (deep ensemble = mean softmax of the anchors, BMA,
any ``extra_models``): test accuracy, NLL, ECE, Brier score, confidence AUROC; train loss/accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = [
    "PLOT_NAMES",
    "REPORT_KEYS",
    "ExtraModel",
    "add_parser",
    "evaluate_run",
    "render_markdown",
    "run",
    "select_pairs",
    "summarize_barriers",
]

REPORT_KEYS = ("barriers", "models", "ensembles", "summary")
PLOT_NAMES = {
    "curves": "interpolation_curves.png",
    "distribution": "barrier_distribution.png",
    "reliability": "reliability.png",
}
GROUPS = {
    "star_vs_held_out": "star ↔ held-out",
    "anchor_vs_held_out": "anchor ↔ held-out",
    "star_vs_anchor": "star ↔ anchor",
}
SPLITS = ("train", "test")

# A model scored next to the run's own: a callable mapping the test DataLoader (dataset order, batches of
# dicts with the model input and ``labels``) to probabilities [N_test, C], or a model whose ``.logits``
# are read as logits / log-probabilities.
ExtraModel = Callable[[Any], torch.Tensor] | nn.Module


def select_pairs(anchors: Sequence[str], held_out: Sequence[str], pairs: str | int = "all", seed: int = 0):
    """All (anchor, held-out) pairs, or a sample of ``pairs`` of them drawn with ``seed`` (kept in order)."""
    every = [(a, h) for a in anchors for h in held_out]
    if pairs == "all":
        return every
    if isinstance(pairs, bool) or not isinstance(pairs, int) or pairs < 1:
        raise ValueError(f"pairs must be 'all' or a positive integer, got {pairs!r}")
    if pairs >= len(every):
        return every
    chosen = set(random.Random(seed).sample(range(len(every)), pairs))
    return [p for i, p in enumerate(every) if i in chosen]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize_barriers(barriers: Mapping[str, list[dict]]) -> dict[str, Any]:
    """Mean ± sample std (n-1) of loss and accuracy barriers per pair group and split, and star/ordinary ratios."""
    out: dict[str, Any] = {}
    for group in GROUPS:
        rows = barriers.get(group, [])
        out[group] = {
            f"{split}_{kind}_barrier": _stats([r[split][f"{kind}_barrier"] for r in rows if split in r])
            for split in SPLITS
            for kind in ("loss", "accuracy")
        }
    ratio = {}
    for split in SPLITS:
        star = out["star_vs_held_out"][f"{split}_loss_barrier"]["mean"]
        ordinary = out["anchor_vs_held_out"][f"{split}_loss_barrier"]["mean"]
        ratio[split] = star / ordinary if star is not None and ordinary else None
    out["loss_barrier_ratio"] = ratio
    return out


def _existing_outputs(run_dir: str) -> list[str]:
    found = []
    report = os.path.join(run_dir, "report.json")
    if os.path.isfile(report):
        with open(report) as f:
            try:
                keys = set(json.load(f))
            except json.JSONDecodeError:
                raise ValueError(f"{report} is not valid JSON; fix or remove it") from None
        if keys & set(REPORT_KEYS):
            found.append(f"{report} (evaluation keys)")
    for name in ("report.md", *PLOT_NAMES.values()):
        if os.path.exists(os.path.join(run_dir, name)):
            found.append(os.path.join(run_dir, name))
    return found


def _probs_of_extra(name: str, extra: ExtraModel, data, accelerator, num_labels: int, n_test: int) -> torch.Tensor:
    from .predict import predict

    if isinstance(extra, nn.Module):
        return predict(extra, data.prepared["test"], accelerator, desc=name).probs
    probs = torch.as_tensor(extra(data.plain["test"])).detach().float().cpu()
    if probs.shape != (n_test, num_labels):
        raise ValueError(
            f"extra model {name!r} returned probabilities of shape {tuple(probs.shape)}; expected "
            f"({n_test}, {num_labels}) for the test split in dataset order"
        )
    return probs


def _bma_extra(run_dir: str) -> tuple[ExtraModel | None, str | None]:
    """RUN_DIR/bma loaded with :func:`star_merge.bma.load_bma` (its logits are log mean member probabilities)."""
    path = os.path.join(run_dir, "bma")
    if not os.path.isdir(path):
        return None, None
    try:
        from ..bma import load_bma

        return load_bma(path), None
    except Exception as e:  # noqa: BLE001 - report why BMA was skipped instead of failing the evaluation
        return None, f"could not load {path}: {(str(e).splitlines() or [type(e).__name__])[0]}"


def evaluate_run(
    run_dir: str,
    *,
    pairs: str | int = "all",
    seed: int = 0,
    extra_models: Mapping[str, ExtraModel] | None = None,
    metrics: Sequence[str] = (),
    overwrite: bool = False,
    num_points: int = 11,
    batch_size: int = 512,
    accelerator=None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a run directory; writes report.json (trainer keys kept), report.md and PNGs, returns our keys.

    ``extra_models``: name -> callable(test DataLoader) -> probs [N_test, C], or an nn.Module; scored
    as ensemble rows. When RUN_DIR/bma exists and no ``"bma"`` is given, it is scored too (see
    docs/evaluation.md for the hook). ``metrics``: extra ``evaluate`` metric names. Existing evaluation
    outputs are refused unless ``overwrite``. Weight matching of pair ``i`` uses seed ``seed + i``.
    """
    from accelerate import Accelerator

    from ..adapters import spec_for
    from ..connectivity import has_batchnorm
    from ..data import check_labels
    from ..matching import weight_matching
    from ..metrics import classification_metrics, compute_evaluate_metrics, load_evaluate_metrics
    from ..rundir import RunDirectory
    from ..spec import apply_permutation
    from .barrier import check_same_architecture
    from .predict import EvalData, interpolation_curves, predict

    rd = RunDirectory(run_dir)
    existing = _existing_outputs(rd.path)
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite (overwrite=True) to re-evaluate")
    if num_points < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points}")
    extra_metrics = load_evaluate_metrics(metrics)
    accelerator = accelerator or Accelerator()
    anchors = [m.name for m in rd.anchors]
    held_out = [m.name for m in rd.held_out]
    chosen_pairs = select_pairs(anchors, held_out, pairs, seed)

    star = rd.load_star()
    dataset = rd.load_dataset()
    check_labels(dataset, star.config.num_labels)
    data = EvalData(dataset, accelerator, batch_size, SPLITS)
    spec = spec_for(star)

    # ---- per-model predictions and metrics
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    test_probs: dict[str, torch.Tensor] = {}
    models: dict[str, Any] = {}
    labels = None
    roles = {"star": ("star", rd.star_path), **{m.name: (m.role, m.path) for m in rd.members}}
    for name, (role, path) in tqdm(roles.items(), desc="scoring models", disable=not progress, leave=False):
        model = star if name == "star" else rd.load_member(name)
        if name != "star":
            check_same_architecture(star, model, ("star", name))
        state_dicts[name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        train_pred = predict(model, data.prepared["train"], accelerator, desc=f"{name} train", progress=progress)
        test_pred = predict(model, data.prepared["test"], accelerator, desc=f"{name} test", progress=progress)
        labels = test_pred.labels
        test_probs[name] = test_pred.probs
        models[name] = {
            "role": role,
            "path": os.path.relpath(path, rd.path) if path.startswith(rd.path) else path,
            "train": {"loss": train_pred.loss, "accuracy": train_pred.accuracy},
            "test": {
                **classification_metrics(test_probs[name], labels),
                **compute_evaluate_metrics(extra_metrics, test_probs[name], labels),
            },
        }

    from .._faults import fault_point

    fault_point("evaluation")
    # ---- ensembles
    ensembles: dict[str, Any] = {}
    if len(anchors) >= 2:
        probs = torch.stack([test_probs[a] for a in anchors]).mean(0)
        test_probs["deep ensemble"] = probs
        ensembles["deep_ensemble"] = {
            "members": anchors,
            "test": {**classification_metrics(probs, labels), **compute_evaluate_metrics(extra_metrics, probs, labels)},
        }
    extras = dict(extra_models or {})
    if "bma" not in extras:
        bma, skipped = _bma_extra(rd.path)
        if bma is not None:
            extras["bma"] = bma
        elif skipped:
            ensembles["bma"] = {"skipped": skipped}
            accelerator.print(f"BMA not evaluated: {skipped}")
    for name, extra in extras.items():
        probs = _probs_of_extra(name, extra, data, accelerator, star.config.num_labels, len(labels))
        test_probs[name] = probs
        ensembles[name] = {
            "test": {**classification_metrics(probs, labels), **compute_evaluate_metrics(extra_metrics, probs, labels)}
        }

    # ---- barriers
    stored_perms = {}
    if os.path.isfile(os.path.join(rd.path, "anchor_permutations.safetensors")):
        stored_perms = rd.anchor_permutations()
    jobs = [("star_vs_held_out", "star", h) for h in held_out]
    jobs += [("anchor_vs_held_out", a, h) for a, h in chosen_pairs]
    jobs += [("star_vs_anchor", "star", a) for a in anchors]
    container = star
    barriers: dict[str, Any] = {
        "settings": {
            "alignment": "weight matching",
            "num_points": num_points,
            "pairs": pairs,
            "seed": seed,
            "bn_reset": has_batchnorm(container),
            "splits": list(SPLITS),
            "num_samples": {s: len(dataset[s]) for s in SPLITS},
        },
        **{group: [] for group in GROUPS},
    }
    for i, (group, a, b) in enumerate(tqdm(jobs, desc="barriers", disable=not progress)):
        init = stored_perms.get(b) if group == "star_vs_anchor" else None
        match = weight_matching(spec, state_dicts[a], state_dicts[b], seed=seed + i, init_perm=init)
        sd_b = apply_permutation(spec, match.perm, state_dicts[b])
        curves = interpolation_curves(container, state_dicts[a], sd_b, data, num_points, progress=False)
        alignment = {"method": "weight", "objective": match.objective, "iterations": match.iterations}
        barriers[group].append({"a": a, "b": b, "alignment": alignment, **{s: c.to_dict() for s, c in curves.items()}})

    summary = summarize_barriers(barriers)
    summary["star_test_accuracy"] = models["star"]["test"]["accuracy"]
    summary["star_test_nll"] = models["star"]["test"]["nll"]
    summary["star_train_loss"] = models["star"]["train"]["loss"]
    for role, key in (("anchor", "anchor"), ("held-out", "held_out")):
        rows = [m for m in models.values() if m["role"] == role]
        summary[f"mean_{key}_test_accuracy"] = _stats([m["test"]["accuracy"] for m in rows])["mean"]
        summary[f"mean_{key}_test_nll"] = _stats([m["test"]["nll"] for m in rows])["mean"]
        summary[f"mean_{key}_train_loss"] = _stats([m["train"]["loss"] for m in rows])["mean"]
    if "deep_ensemble" in ensembles:
        summary["deep_ensemble_test_accuracy"] = ensembles["deep_ensemble"]["test"]["accuracy"]

    ours = {"barriers": barriers, "models": models, "ensembles": ensembles, "summary": summary}
    if accelerator.is_main_process:
        _write_outputs(rd.path, ours, test_probs, labels, seed)
    accelerator.wait_for_everyone()
    return ours


def _write_outputs(run_dir: str, ours: dict, test_probs: Mapping[str, torch.Tensor], labels, seed: int) -> None:
    from ..metrics import expected_calibration_error, reliability_bins
    from ..rundir import atomic_write_json, atomic_write_text
    from .plots import plot_barrier_distribution, plot_interpolation_bands, plot_reliability

    report_path = os.path.join(run_dir, "report.json")
    report: dict[str, Any] = {}
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
    report.update(ours)
    atomic_write_json(report_path, report)
    atomic_write_text(os.path.join(run_dir, "report.md"), render_markdown(report))

    from ..connectivity import InterpolationCurve

    def curves(rows):
        return [{s: InterpolationCurve(r[s]["ts"], r[s]["losses"], r[s]["accuracies"]) for s in SPLITS} for r in rows]

    barriers = ours["barriers"]
    plot_interpolation_bands(
        {GROUPS[g]: curves(barriers[g]) for g in ("star_vs_held_out", "anchor_vs_held_out")},
        os.path.join(run_dir, PLOT_NAMES["curves"]),
    )
    plot_barrier_distribution(
        {s: {GROUPS[g]: [r[s]["loss_barrier"] for r in barriers[g]] for g in GROUPS} for s in SPLITS},
        os.path.join(run_dir, PLOT_NAMES["distribution"]),
        seed=seed,
    )
    shown = ["star"] + [n for n, m in ours["models"].items() if m["role"] == "anchor"][:1]
    shown += [n for n in test_probs if n not in ours["models"]]
    bins = {}
    for name in shown:
        bins[name] = {**reliability_bins(test_probs[name], labels), "ece": expected_calibration_error(test_probs[name], labels)}
    plot_reliability(bins, os.path.join(run_dir, PLOT_NAMES["reliability"]))


# ---------------------------------------------------------------------------------------------- Markdown


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.2f}" if pct else f"{value:.4f}"


def _pm(stats: Mapping[str, Any], pct: bool = False) -> str:
    if not stats or stats.get("mean") is None:
        return "–"
    return f"{_fmt(stats['mean'], pct)} ± {_fmt(stats['std'], pct)}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: summary, per-model and ensemble metrics, every pair's barriers, the plots."""
    s, barriers = report["summary"], report["barriers"]
    settings = barriers["settings"]
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
        "| pairs | n | train loss barrier | test loss barrier | train acc. barrier | test acc. barrier |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group, label in GROUPS.items():
        g = s[group]
        lines.append(
            f"| {label} | {g['test_loss_barrier']['n']} | {_pm(g['train_loss_barrier'])} | {_pm(g['test_loss_barrier'])} "
            f"| {_pm(g['train_accuracy_barrier'], True)} | {_pm(g['test_accuracy_barrier'], True)} |"
        )
    ratio = s["loss_barrier_ratio"]
    lines += [
        "",
        f"- star / ordinary loss-barrier ratio: train {_fmt(ratio['train'])}, test {_fmt(ratio['test'])}",
        (f"- star test accuracy {_fmt(s['star_test_accuracy'], True)}% vs mean anchor "
        f"{_fmt(s['mean_anchor_test_accuracy'], True)}%; star train loss {_fmt(s['star_train_loss'])} vs mean anchor "
         f"{_fmt(s['mean_anchor_train_loss'])} (a poor star shows low barriers for a bad reason)"),
        "",
        "## Models and ensembles (test split)",
        "",
        "| model | role | train loss | accuracy (%) | NLL | ECE (%) | Brier | AUROC max-p | AUROC entropy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(n, m["role"], m["train"]["loss"], m["test"]) for n, m in report["models"].items()]
    rows += [(n, "ensemble", None, e["test"]) for n, e in report["ensembles"].items() if "test" in e]
    for name, role, train_loss, t in rows:
        lines.append(
            f"| {name} | {role} | {_fmt(train_loss)} | {_fmt(t['accuracy'], True)} | {_fmt(t['nll'])} "
            f"| {_fmt(t['ece'], True)} | {_fmt(t['brier'])} | {_fmt(t['auroc_max_prob'])} | {_fmt(t['auroc_entropy'])} |"
        )
    for name, e in report["ensembles"].items():
        if "skipped" in e:
            lines.append(f"\n{name}: not evaluated ({e['skipped']})")
    lines += [
        "",
        "## Every pair",
        "",
        "| pairs | A (t=0) | B (t=1, aligned) | train loss barrier | test loss barrier | test acc. barrier |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for group, label in GROUPS.items():
        for r in barriers[group]:
            lines.append(
                f"| {label} | {r['a']} | {r['b']} | {_fmt(r['train']['loss_barrier'])} "
                f"| {_fmt(r['test']['loss_barrier'])} | {_fmt(r['test']['accuracy_barrier'], True)} |"
            )
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({name})" for key, name in PLOT_NAMES.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- CLI


def _pairs_arg(value: str) -> str | int:
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pairs must be 'all' or a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"--pairs must be 'all' or a positive integer, got {value!r}")
    return n


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``evaluate`` on an ``argparse`` subparsers object; ``run`` is its handler."""
    p = subparsers.add_parser(
        "evaluate",
        help="barriers and metrics of a Starlight run directory -> report.json, report.md, plots",
        description="Evaluate RUN_DIR: star/anchor ↔ held-out barriers, per-model and ensemble metrics.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by recipes/star.py")
    p.add_argument("--pairs", type=_pairs_arg, default="all", help="anchor ↔ held-out pairs: 'all' or a seeded sample of N")
    p.add_argument("--seed", type=int, default=0, help="seed of pair sampling and weight matching")
    p.add_argument("--metrics", nargs="*", default=[], help="extra `evaluate` metric names (needs `evaluate`)")
    p.add_argument("--num_points", type=int, default=11, help="interpolation points, ends included")
    p.add_argument("--batch_size", type=int, default=512)
    p.add_argument("--overwrite", action="store_true", help="replace an existing evaluation in RUN_DIR")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``star-merge evaluate``: prints the summary; errors propagate as exceptions."""
    out = evaluate_run(
        args.run_dir,
        pairs=args.pairs,
        seed=args.seed,
        metrics=args.metrics,
        overwrite=args.overwrite,
        num_points=args.num_points,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    s = out["summary"]
    for group, label in GROUPS.items():
        for split in SPLITS:
            st = s[group][f"{split}_loss_barrier"]
            if st["n"]:
                print(f"{label:>18} {split:>5} loss barrier: {st['mean']:.4f} ± {st['std']:.4f} (n={st['n']})")
    r = s["loss_barrier_ratio"]
    print(f"star / ordinary loss-barrier ratio: train {_fmt(r['train'])}, test {_fmt(r['test'])}")
    print(
        f"test accuracy: star {_fmt(s['star_test_accuracy'], True)}%, "
        f"mean anchor {_fmt(s['mean_anchor_test_accuracy'], True)}%"
    )
    print(f"wrote {os.path.join(os.path.abspath(args.run_dir), 'report.json')}, report.md and plots")
    return 0
