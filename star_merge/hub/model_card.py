"""Model cards (README.md with Hub metadata) for a run's star model and its BMA wrapper.

Cards are built with ``huggingface_hub.ModelCard``/``ModelCardData``. An existing card is updated, not
clobbered (the peft pattern): its metadata is merged (tags added, ``base_model``/``model-index`` refreshed)
and only the text between the ``<!-- star-merge:begin -->`` / ``<!-- star-merge:end -->`` markers is
regenerated, so anything a user wrote outside them survives.

``library_name``: ``transformers`` when the star's architecture is a transformers class (the star is an
ordinary checkpoint of the anchors' architecture, so plain ``from_pretrained`` loads it); ``star-merge``
for the built-in ``star-mlp``/``star-cnn1d`` models, which load with transformers after ``import star_merge``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from ..data import BUILTIN_DATASETS
from ..models import BUILTIN_MODEL_TYPES, FEATURE_MODEL_TYPES
from ..evaluation.summary import RunSummary, finite_number
from ..evaluation.verdict import headline, judge_star
from ..io import atomic_write_text
from ..rundir import RunPaths
from ..tasks import pipeline_tag_for
from .bma_card import build_bma_card
from .cards import PAPER_URL, TAGS, citation, member_rows, merge_card, new_or_existing, read_json

__all__ = ["build_model_card", "card_metrics", "run_cards", "write_model_card"]

# ------------------------------------------------------------------------------------------- metrics
STAR_BARRIER = "Test loss barrier, star ↔ held-out (mean)"
BASELINE_BARRIER = "Test loss barrier, anchor ↔ held-out (mean, baseline)"
# The card's metrics: (metric type, name, the RunSummary attribute holding the value). A metric whose value
# the report does not hold is left out.
CARD_METRICS: list[tuple[str, str, Callable[[RunSummary], float | None]]] = [
    ("accuracy", "Test accuracy (star)", lambda s: s.star_test_accuracy),
    ("nll", "Test NLL (star)", lambda s: s.star_test_nll),
    ("ece", "Test ECE (star)", lambda s: s.star_test_ece),
    ("loss", "Train loss (star)", lambda s: s.star_train_loss),
    ("accuracy", "Test accuracy (mean anchor, baseline)", lambda s: s.mean_anchor_test_accuracy),
    ("nll", "Test NLL (mean anchor, baseline)", lambda s: s.mean_anchor_test_nll),
    # the paper's metric (train-loss barrier) first, the test-loss barrier beside it
    ("loss_barrier", "Train loss barrier, star ↔ held-out (mean)",
     lambda s: s.group("star_vs_held_out").train_loss_barrier.mean),
    ("loss_barrier", "Train loss barrier, anchor ↔ held-out (mean, baseline)",
     lambda s: s.group("anchor_vs_held_out").train_loss_barrier.mean),
    ("loss_barrier", STAR_BARRIER, lambda s: s.group("star_vs_held_out").test_loss_barrier.mean),
    ("loss_barrier", BASELINE_BARRIER, lambda s: s.group("anchor_vs_held_out").test_loss_barrier.mean),
]


def _dataset_of(manifest: dict) -> tuple[str, str]:
    """(dataset_type, dataset_name) for the model-index."""
    data = manifest.get("data") or {}
    name = data.get("dataset_name") or "unknown"
    config = data.get("dataset_config_name")
    return name, f"{name} ({config})" if config else name


def card_metrics(report: dict, manifest: dict | None = None, *, task_type: str = "classification") -> list:
    """The model-index ``EvalResult`` list of a run: star accuracy, loss, NLL, ECE and mean loss barriers.

    Values are read from ``report.json`` through :class:`~star_merge.evaluation.summary.RunSummary`, unrounded;
    metrics the report does not hold are left out.
    """
    from huggingface_hub import EvalResult

    dataset_type, dataset_name = _dataset_of(manifest or {})
    test_split = ((manifest or {}).get("data") or {}).get("test_split") or "test"
    summary = RunSummary.from_report(report)
    out = []
    for metric_type, metric_name, read in CARD_METRICS:
        value = read(summary)
        if value is None:
            continue
        split = "train" if metric_name.startswith("Train") else test_split  # metric names say the split
        out.append(EvalResult(task_type=task_type, dataset_type=dataset_type, dataset_name=dataset_name,
                              dataset_split=split, metric_type=metric_type, metric_name=metric_name,
                              metric_value=value))
    return out


# ------------------------------------------------------------------------------------------- run facts
def _architecture(config: dict) -> str | None:
    return (config.get("architectures") or [None])[0]


def _pipeline_tag(config: dict) -> str | None:
    arch = _architecture(config) or ""
    if config.get("model_type") in FEATURE_MODEL_TYPES:
        return None  # star-mlp / star-cnn1d read feature vectors, no pipeline serves them
    return pipeline_tag_for(arch)


def _library_name(config: dict) -> str:
    return "star-merge" if config.get("model_type") in BUILTIN_MODEL_TYPES else "transformers"


def _hub_base_models(manifest: dict) -> list[str]:
    out = []
    for m in manifest.get("members") or []:
        if m.get("role") == "anchor" and m.get("repo_id") and m["repo_id"] not in out:
            out.append(m["repo_id"])
    return out


def _head_notes(config: dict) -> list[str]:
    """What the card must say about heads Starlight did not train (a ``…ForPreTraining`` star: the NSP head)."""
    if not (_architecture(config) or "").endswith("ForPreTraining"):
        return []
    return [
        "**Next-sentence head not trained.** Starlight optimised the masked-LM loss only: the next-sentence "
        "prediction head (`cls.seq_relationship`) and the pooler it reads (`bert.pooler`) got no gradient and "
        "are carried unchanged from the star's initialisation (the run's `init`: random weights, or anchor K's "
        "with `anchor:K`; decayed towards 0 when `weight_decay` > 0). Use the star's masked-LM predictions; its "
        "next-sentence predictions are not a trained model's.",
        "",
    ]


def _load_snippet(repo: str, config: dict) -> str:
    arch = _architecture(config)
    if config.get("model_type") in BUILTIN_MODEL_TYPES:
        return (
            "```python\n"
            "import star_merge  # pip install star-merge; registers its built-in models (star-cifar-resnet, ...)\n"
            "from transformers import AutoModel\n\n"
            f'model = AutoModel.from_pretrained("{repo}")\n'
            "```"
        )
    cls = arch if arch else "AutoModel"
    return (
        "```python\n"
        f"from transformers import {cls}\n\n"
        f'model = {cls}.from_pretrained("{repo}")  # an ordinary {config.get("model_type")} checkpoint\n'
        "```"
    )


def _fmt(value: Any) -> str:
    v = finite_number(value)
    return "—" if v is None else f"{v:.4f}"


def _results_section(metrics: list, summary: RunSummary) -> list[str]:
    if not metrics:
        return ["No evaluation report yet: run `star-merge evaluate RUN_DIR`, then refresh this card."]
    lines = [
        f"Star ↔ held-out / anchor ↔ held-out {headline(summary)} (lower is better).",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    lines += [f"| {r.metric_name} | {_fmt(r.metric_value)} |" for r in metrics]
    return lines


def _plots(folder: str) -> list[str]:
    pngs = sorted(f for f in os.listdir(folder) if f.lower().endswith(".png") and not f.startswith("."))
    out = []
    for name in pngs:
        title = os.path.splitext(name)[0].replace("_", " ").replace("-", " ")
        out += [f"![{title}]({name})", ""]
    return out


def _settings(manifest: dict) -> list[str]:
    config = manifest.get("config") or {}
    data = manifest.get("data") or {}
    if not config and not data:
        return []
    body = json.dumps({"config": config, "data": data}, indent=2, sort_keys=True, default=str)
    return ["<details><summary>Starlight settings</summary>", "", "```json", body, "```", "", "</details>", ""]


# ------------------------------------------------------------------------------------------- cards
def build_model_card(
    run_dir: str,
    *,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    existing: str | None = None,
):
    """The star model's card as a ``huggingface_hub.ModelCard`` (nothing written).

    ``repo_id`` is used in the loading snippet (default: the run folder's name); ``existing``: a README.md
    to update instead of starting from scratch.
    """
    paths = RunPaths(run_dir)
    run_dir = paths.path
    manifest = read_json(paths.manifest_path)
    report = read_json(paths.report_json)
    star_config = read_json(os.path.join(paths.star_path, "config.json"))
    name = repo_id or os.path.basename(run_dir)
    model_type = star_config.get("model_type") or manifest.get("model_type") or "unknown"
    pipeline_tag = _pipeline_tag(star_config)
    metrics = card_metrics(report, manifest, task_type=pipeline_tag or "classification")
    anchors = [m for m in manifest.get("members") or [] if m.get("role") == "anchor"]
    held_out = [m for m in manifest.get("members") or [] if m.get("role") == "held-out"]
    data_name = (manifest.get("data") or {}).get("dataset_name")
    base_models = _hub_base_models(manifest)

    summary = RunSummary.from_report(report)
    verdict = [f"**Verdict: {judge_star(summary).text}.**", ""] if metrics else []
    text = [
        f"# {name.split('/')[-1]}: a Starlight star model",
        "",
        *verdict,  # first thing under the title
        f"A **star model** of {len(anchors)} independently trained `{model_type}` anchors"
        + (f" on `{data_name}`" if data_name else "")
        + ", learned with [Starlight](" + PAPER_URL + ") by [star-merge](https://pypi.org/project/star-merge/). "
        "A star model is linearly connected with low loss to every other solution of the task modulo neuron "
        "permutations, including models it never saw"
        + (f" (here checked against {len(held_out)} held-out model{'s' if len(held_out) != 1 else ''})" if held_out else "")
        + ". It is an ordinary checkpoint of the anchors' architecture.",
        "",
        *_head_notes(star_config),
        "## Results",
        "",
        *_results_section(metrics, summary),
        "",
    ]
    plots = _plots(run_dir)
    if plots:
        text += ["## Plots", "", *plots]
    text += [
        "## How to load",
        "",
        _load_snippet(name, star_config),
        "",
        "## Population",
        "",
        "Anchors were aligned to the star by weight matching; held-out models were never shown to Starlight.",
        "",
        *member_rows(manifest),
        "",
        *_settings(manifest),
        *citation(),
    ]
    card = new_or_existing(existing)
    datasets = [data_name] if data_name and data_name not in BUILTIN_DATASETS and not os.path.isabs(data_name) else None
    updates = {
        "library_name": _library_name(star_config),
        "license": license,
        "pipeline_tag": pipeline_tag,
        "base_model": (base_models[0] if len(base_models) == 1 else base_models) or None,
        "datasets": datasets,
        "model_name": name,
        "eval_results": metrics or None,
    }
    return merge_card(card, "\n".join(text), updates, TAGS + ([model_type] if model_type != "unknown" else []))


def run_cards(run_dir: str, *, repo_id: str | None = None, bma_repo_id: str | None = None,
              license: str = "apache-2.0", bma: bool = True) -> dict:
    """The run's model cards (``ModelCard``), keyed by their path in the run: the star's ``README.md`` and, with
    ``bma``, the wrapper's ``bma/README.md``. An existing card is updated (metadata merged, the generated block
    refreshed, the user's own text kept); nothing is written."""
    paths = RunPaths(run_dir)
    cards = {paths.card_path: build_model_card(paths.path, repo_id=repo_id, license=license, existing=paths.card_path)}
    if bma:
        cards[paths.bma_card_path] = build_bma_card(paths.path, repo_id=bma_repo_id, star_repo_id=repo_id,
                                                    license=license, existing=paths.bma_card_path)
    return cards


def write_model_card(
    run_dir: str,
    *,
    license: str = "apache-2.0",
    overwrite: bool = True,
    repo_id: str | None = None,
    bma_repo_id: str | None = None,
) -> str:
    """Write ``RUN_DIR/README.md`` (and ``RUN_DIR/bma/README.md`` when ``bma/`` exists); returns the first path.

    An existing card is updated (metadata merged, the generated block refreshed, your own text kept);
    ``overwrite=False`` refuses to touch an existing card instead.
    """
    paths = RunPaths(run_dir).require()
    cards = run_cards(paths.path, repo_id=repo_id, bma_repo_id=bma_repo_id, license=license,
                      bma=os.path.isdir(paths.bma_path))
    if not overwrite:
        existing = [p for p in cards if os.path.exists(p)]
        if existing:
            raise FileExistsError(f"{existing[0]} exists; pass overwrite=True to update it (your text outside the star-merge markers is kept)")
    for path, card in cards.items():
        atomic_write_text(path, str(card))
    return paths.card_path
