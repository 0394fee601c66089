"""The model card of a run's BMA wrapper (``RUN_DIR/bma/README.md``); the star's card is :mod:`.model_card`, what both share :mod:`.cards`."""

from __future__ import annotations

import os

from ..rundir import RunPaths
from .cards import TAGS, citation, member_rows, merge_card, new_or_existing, read_json

__all__ = ["build_bma_card"]


def build_bma_card(
    run_dir: str,
    *,
    repo_id: str | None = None,
    star_repo_id: str | None = None,
    license: str = "apache-2.0",
    existing: str | None = None,
):
    """The card of the BMA wrapper in ``RUN_DIR/bma`` as a ``ModelCard`` (nothing written)."""
    paths = RunPaths(run_dir)
    run_dir = paths.path
    bma_dir = paths.bma_path
    config = read_json(os.path.join(bma_dir, "config.json"))
    manifest = read_json(paths.manifest_path)
    name = repo_id or f"{os.path.basename(run_dir)}-bma"
    auto_map = config.get("auto_map") or {}
    auto_cls = next((k for k in auto_map if k.startswith("AutoModel")), None) or "AutoModel"
    code_files = sorted(f for f in os.listdir(bma_dir) if f.endswith(".py")) if os.path.isdir(bma_dir) else []
    if auto_map:
        snippet = (
            "```python\n"
            f"from transformers import {auto_cls}\n\n"
            f"# The wrapper's code ships in this repo ({', '.join(code_files) or 'see files'}): read it, then\n"
            f'model = {auto_cls}.from_pretrained("{name}", trust_remote_code=True)\n'
            "```\n\nWith star-merge installed (`pip install star-merge`), run `import star_merge.bma` first and "
            "drop `trust_remote_code`: the wrapper then loads from the installed package."
        )
    else:
        snippet = (
            "```python\nimport star_merge.bma  # pip install star-merge; registers the BMA wrapper\n"
            f"from transformers import {auto_cls}\n\n"
            f'model = {auto_cls}.from_pretrained("{name}")\n```'
        )
    samples = config.get("num_samples") or config.get("samples")
    text = [
        f"# {name.split('/')[-1]}: Bayesian model averaging over a star domain",
        "",
        "Averages the softmax outputs of points sampled from the star domain of a Starlight run: an anchor n "
        "and t ~ p(t) give the model (1 − t)·θ* + t·π_n(θ_n), where θ* is the star and π_n(θ_n) the anchor "
        "aligned to it"
        + (f" ({len(samples) if isinstance(samples, list) else samples} samples)" if samples else "")
        + "."
        + (f" The star itself: [{star_repo_id}](https://huggingface.co/{star_repo_id})." if star_repo_id else ""),
        "",
        "## How to load",
        "",
        snippet,
        "",
        "## Population",
        "",
        *member_rows(manifest),
        "",
        *citation(),
    ]
    card = new_or_existing(existing)
    updates = {
        "library_name": "transformers" if auto_map else "star-merge",
        "license": license,
        "base_model": star_repo_id,
        "model_name": name,
    }
    return merge_card(card, "\n".join(text), updates, TAGS + ["bayesian-model-averaging"])
