"""The model card of a merged checkpoint (``star-merge merge``): the method, the members, the cost."""

from __future__ import annotations

import os

from ..tasks import pipeline_tag_for
from .cards import merge_card, new_or_existing
from ..models import BUILTIN_MODEL_TYPES

__all__ = ["build_merged_card", "METHOD_PAPERS"]

#: Where each merge method comes from.
METHOD_PAPERS = {
    "mergemany": ("MergeMany, git re-basin (Ainsworth et al., ICLR 2023)", "https://arxiv.org/abs/2209.04836"),
    "cycle": ("cycle-consistent multi-model merging, C2M3 (Crisostomi et al., NeurIPS 2024)",
              "https://arxiv.org/abs/2405.17897"),
    "reference": ("every member weight-matched to member 0, then averaged (git re-basin weight matching)",
                  "https://arxiv.org/abs/2209.04836"),
}
REPAIR_TEXT = {
    None: "none (the members' averaged statistics)",
    "repair": "REPAIR (Jordan et al., ICLR 2023): per-channel statistics restored, folded into the weights",
    "batchnorm-reset": "BatchNorm statistics recomputed over the training data",
}


def _member_row(i: int, m: dict, weight: float) -> str:
    if m.get("repo_id"):
        rev = m.get("revision") or ""
        source = f"[{m['repo_id']}](https://huggingface.co/{m['repo_id']})" + (f" @ `{rev[:10]}`" if rev else "")
    else:  # a local folder: its name only, never the user's absolute path
        source = f"local folder `{os.path.basename(os.path.normpath(str(m.get('source', '?'))))}`"
    return f"| {i} | {source} | {weight:.4g} |"


def build_merged_card(info: dict, config: dict, existing: str | None = None):
    """A ``huggingface_hub.ModelCard`` for the merge described by ``info`` (``star_merge_merge.json``)."""
    method = info["method"]
    paper, url = METHOD_PAPERS[method]
    builtin = config.get("model_type") in BUILTIN_MODEL_TYPES
    rows = ["| member | source | weight |", "| --- | --- | --- |"]
    rows += [_member_row(i, m, w) for i, (m, w) in enumerate(zip(info["members"], info["weights"]))]
    text = "\n".join([
        f"# Merged {config.get('model_type', 'model')} ({method})",
        "",
        f"{len(info['members'])} independently trained checkpoints of one architecture, aligned modulo permutation "
        f"and averaged without training by star-merge — method: [{paper}]({url}).",
        "",
        f"- statistics repair: {REPAIR_TEXT.get(info.get('repair'), info.get('repair'))}",
        f"- alignment: {info.get('iterations', 0)} iteration(s), {info.get('seconds', 0.0):.2f} s "
        f"({info.get('seconds_total', 0.0):.2f} s with loading and repair); seed {info.get('seed', 0)}",
        "",
        "## Members",
        "",
        *rows,
    ])
    base = [m["repo_id"] for m in info["members"] if m.get("repo_id")]
    data = {"library_name": "star-merge" if builtin else "transformers",
            "pipeline_tag": None if builtin else pipeline_tag_for((config.get("architectures") or [""])[0]),
            "base_model": base or None}
    return merge_card(new_or_existing(existing), text, data, ["star-merge", "merge", "model-merging", method])
