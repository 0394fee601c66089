"""Evaluating a run directory (:func:`evaluate_run`): every barrier and metric of a Starlight run.

The numbers are computed here; :mod:`.render` writes report.json, report.md and the plots, :mod:`.cli` is
``star-merge evaluate RUN_DIR``.

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

import json
import os
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..rundir import PLOT_NAMES, RunPaths
from .render import GROUPS, SPLITS, render_markdown, write_outputs
from ..errors import UserError
from ..groups import check_symmetry

__all__ = [
    "PLOT_NAMES",
    "REPORT_KEYS",
    "ExtraModel",
    "evaluate_run",
    "render_markdown",
    "select_pairs",
    "summarize_barriers",
]

REPORT_KEYS = ("barriers", "models", "ensembles", "summary")

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
        raise UserError(f"pairs must be 'all' or a positive integer, got {pairs!r}")
    if pairs >= len(every):
        return every
    chosen = set(random.Random(seed).sample(range(len(every)), pairs))
    return [p for i, p in enumerate(every) if i in chosen]


def _stats(values: Sequence[float]) -> dict[str, Any]:
    values = [float(v) for v in values]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    std = statistics.stdev(values) if len(values) > 1 else None  # undefined for one pair, never "± 0"
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
    paths = RunPaths(run_dir)
    found = []
    report = paths.report_json
    if os.path.isfile(report):
        with open(report) as f:
            try:
                keys = set(json.load(f))
            except json.JSONDecodeError:
                raise UserError(f"{report} is not valid JSON; fix or remove it") from None
        if keys & set(REPORT_KEYS):
            found.append(f"{report} (evaluation keys)")
    for path in (paths.report_md, *map(paths.plot, PLOT_NAMES)):
        if os.path.exists(path):
            found.append(path)
    return found


def _stats_of_extra(name: str, extra: ExtraModel, data, accelerator, task, num_labels: int, labels):
    """An extra model's :class:`.streaming.UnitStats` on the test split: a module is streamed batch by batch, a
    callable returns its [N_test, C] probabilities in one piece."""
    from .streaming import UnitStats, score_models

    if isinstance(extra, nn.Module):
        return score_models({name: extra}, data.prepared["test"], task, accelerator, desc=name)[name]
    probs = torch.as_tensor(extra(data.plain["test"])).detach().float().cpu()
    if probs.shape != (len(labels), num_labels):
        raise UserError(
            f"extra model {name!r} returned probabilities of shape {tuple(probs.shape)}; expected "
            f"({len(labels)}, {num_labels}) for the test split in dataset order"
        )
    return UnitStats.from_probs(probs, labels)


def _bma_extra(run_dir: str) -> tuple[ExtraModel | None, str | None]:
    """RUN_DIR/bma loaded with :func:`star_merge.bma.load_bma` (its logits are log mean member probabilities)."""
    path = RunPaths(run_dir).bma_path
    if not os.path.isdir(path):
        return None, None
    try:
        from ..bma import load_bma

        return load_bma(path), None
    except Exception as e:  # noqa: BLE001 - report why BMA was skipped instead of failing the evaluation
        return None, f"could not load {path}: {(str(e).splitlines() or [type(e).__name__])[0]}"


@dataclass
class _Run:
    """What every step of :func:`evaluate_run` reads: the run, its data and task, the accelerator."""

    rd: Any
    star: nn.Module
    data: Any
    task: Any
    accelerator: Any
    progress: bool


def _score_models(run: _Run, anchors: Sequence[str]):
    """Train loss/accuracy of every model, test statistics streamed (every model on each batch, and the deep
    ensemble of the anchors); returns (CPU state dicts, per-model rows, test stats)."""
    from ..modeling import check_same_architecture
    from .engine import evaluate_loss_accuracy
    from .streaming import score_models

    rd, star, data, task, accelerator = run.rd, run.star, run.data, run.task, run.accelerator
    state_dicts: dict[str, dict[str, torch.Tensor]] = {}
    loaded: dict[str, nn.Module] = {}
    models: dict[str, Any] = {}
    roles = {"star": ("star", rd.star_path), **{m.name: (m.role, m.path) for m in rd.members}}
    for name, (role, path) in tqdm(roles.items(), desc="scoring models", disable=not run.progress, leave=False):
        model = star if name == "star" else rd.load_member(name)
        if name != "star":
            check_same_architecture(star, model, ("star", name))
        state_dicts[name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        loaded[name] = model
        train_loss, train_acc = evaluate_loss_accuracy(model, data.prepared["train"], task=task, accelerator=accelerator,
                                                       desc=f"{name} train", progress=run.progress)
        models[name] = {"role": role, "path": rd.relative(path), "train": {"loss": train_loss, "accuracy": train_acc}}
    ensemble_members = {"deep ensemble": list(anchors)} if len(anchors) >= 2 else {}
    test_stats = score_models(loaded, data.prepared["test"], task, accelerator, ensemble_members,
                              desc="test split", progress=run.progress)
    return state_dicts, models, test_stats


def _score_ensembles(run: _Run, anchors: Sequence[str], extra_models, test_stats, scores) -> dict[str, Any]:
    """The deep ensemble, the run's BMA (unless ``extra_models`` names one) and every extra model."""
    ensembles: dict[str, Any] = {}
    if "deep ensemble" in test_stats:
        ensembles["deep_ensemble"] = {"members": list(anchors), "test": scores(test_stats["deep ensemble"])}
    extras = dict(extra_models or {})
    if "bma" not in extras:
        bma, skipped = _bma_extra(run.rd.path)
        if bma is not None:
            extras["bma"] = bma
        elif skipped:
            ensembles["bma"] = {"skipped": skipped}
            run.accelerator.print(f"BMA not evaluated: {skipped}")
    labels = test_stats["star"].labels
    for name, extra in extras.items():
        test_stats[name] = _stats_of_extra(name, extra, run.data, run.accelerator, run.task,
                                           run.star.config.num_labels, labels)
        ensembles[name] = {"test": scores(test_stats[name])}
    return ensembles


def _measure_barriers(run: _Run, state_dicts, chosen_pairs, settings: dict[str, Any], seed: int,
                      num_points: int) -> dict[str, Any]:
    """Every barrier of the run, B weight-matched to A (pair ``i`` with seed ``seed + i``; star ↔ anchor
    warm-started from the run's stored permutations)."""
    from ..adapters import spec_for
    from ..adapters.folding import fold_state_dict
    from ..matching.align import align, in_symmetry_form
    from .connectivity import interpolation_curves

    rd, symmetry = run.rd, settings.get("symmetry", "permutation")
    container = in_symmetry_form(run.star, symmetry)
    if container is not run.star:  # orthogonal: every model in folded form, the line between folded forms
        state_dicts = {k: fold_state_dict(run.star.config, sd)[0] for k, sd in state_dicts.items()}
    anchors, held_out = [m.name for m in rd.anchors], [m.name for m in rd.held_out]
    stored_perms = rd.anchor_permutations() if rd.has_permutations() else {}
    jobs = [("star_vs_held_out", "star", h) for h in held_out]
    jobs += [("anchor_vs_held_out", a, h) for a, h in chosen_pairs]
    jobs += [("star_vs_anchor", "star", a) for a in anchors]
    spec = spec_for(container, symmetry=symmetry)
    barriers: dict[str, Any] = {"settings": settings, **{group: [] for group in GROUPS}}
    for i, (group, a, b) in enumerate(tqdm(jobs, desc="barriers", disable=not run.progress)):
        init = stored_perms.get(b) if group == "star_vs_anchor" else None
        if init is not None and any(init[p].ndim != (1 if p not in spec.group_kinds else 2) for p in init):
            init = None  # the run's maps are of other kinds (trained with another symmetry)
        sd_b, record = align(spec, state_dicts[a], state_dicts[b], "weight", seed=seed + i, init_perm=init,
                             symmetry=symmetry)
        curves = interpolation_curves(container, state_dicts[a], sd_b, run.data, num_points, progress=False,
                                      task=run.task)
        barriers[group].append({"a": a, "b": b, "alignment": record.to_dict(),
                                **{s: c.to_dict() for s, c in curves.items()}})
    return barriers


def _run_summary(barriers, models, ensembles) -> dict[str, Any]:
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
    return summary


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
    symmetry: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run directory; writes report.json (trainer keys kept), report.md and PNGs, returns our keys.

    ``extra_models``: name -> callable(test DataLoader) -> probs [N_test, C], or an nn.Module; scored
    as ensemble rows. When RUN_DIR/bma exists and no ``"bma"`` is given, it is scored too (see
    docs/evaluation.md for the hook). ``metrics``: extra ``evaluate`` metric names. Existing evaluation
    outputs are refused unless ``overwrite``. Weight matching of pair ``i`` uses seed ``seed + i``.
    ``symmetry``: barriers modulo permutations, or (``orthogonal``) modulo orthogonal maps where the family allows
    them, between the models' folded forms (the same functions; the scores of the models do not change);
    default: the run's (``orthogonal`` when its star was trained so, ``RunDirectory.symmetry``).
    """
    from accelerate import Accelerator

    from .._faults import fault_point
    from ..batchnorm import has_batchnorm
    from ..rundir import RunDirectory
    from .engine import EvalData
    from .metrics import evaluate_metrics_on_predictions, load_evaluate_metrics

    rd = RunDirectory(run_dir)
    existing = _existing_outputs(rd.path)
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite (overwrite=True) to re-evaluate")
    if num_points < 2:
        raise UserError(f"num_points must be >= 2, got {num_points}")
    extra_metrics = load_evaluate_metrics(metrics)
    accelerator = accelerator or Accelerator()
    anchors = [m.name for m in rd.anchors]
    chosen_pairs = select_pairs(anchors, [m.name for m in rd.held_out], pairs, seed)
    star = rd.load_star()
    dataset, collate_fn = rd.load_data()  # checked against the star's config
    run = _Run(rd, star, EvalData(dataset, accelerator, batch_size, SPLITS, collate_fn=collate_fn), rd.task(),
               accelerator, progress)

    state_dicts, models, test_stats = _score_models(run, anchors)
    labels = test_stats["star"].labels

    def scores(stats) -> dict[str, Any]:
        return {**stats.metrics(), **evaluate_metrics_on_predictions(extra_metrics, stats.predictions, labels)}

    for name in models:
        models[name]["test"] = scores(test_stats[name])
    fault_point("evaluation")
    ensembles = _score_ensembles(run, anchors, extra_models, test_stats, scores)
    symmetry = rd.symmetry if symmetry is None else check_symmetry(symmetry)
    settings = {"alignment": "weight matching", "symmetry": symmetry, "num_points": num_points, "pairs": pairs, "seed": seed,
                "bn_reset": has_batchnorm(star), "splits": list(SPLITS),
                "num_samples": {s: len(dataset[s]) for s in SPLITS}}
    barriers = _measure_barriers(run, state_dicts, chosen_pairs, settings, seed, num_points)
    unit = "token" if getattr(run.task, "data_kind", None) == "text" else "example"
    ours = {"task": {"name": run.task.name, "unit": unit}, "barriers": barriers, "models": models,
            "ensembles": ensembles, "summary": _run_summary(barriers, models, ensembles)}
    if accelerator.is_main_process:
        write_outputs(rd.path, ours, test_stats, seed)
    accelerator.wait_for_everyone()
    return ours
