"""Where the star θ starts (``StarlightConfig.init``): random, an anchor, a free merge of the anchors, a checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

import torch

from ..errors import UserError
from ..matching.merge import MERGE_METHODS, merge_models

__all__ = ["initial_state", "check_init"]


def check_init(init: str) -> None:
    """Refuse a malformed ``init`` before any work (a folder is checked when it is read)."""
    if init.startswith("anchor:") and not init.split(":", 1)[1].isdigit():
        raise UserError(f"init={init!r}: write anchor:K with K an anchor index (0, 1, ...)")
    if init.startswith("merge:") and init.split(":", 1)[1] not in MERGE_METHODS:
        raise UserError(f"init={init!r}: write merge or merge:METHOD with METHOD one of {', '.join(MERGE_METHODS)}")


def initial_state(init: str, anchors: Callable[[], Sequence[Mapping[str, torch.Tensor]]], spec,
                  seed: int = 0) -> dict[str, torch.Tensor] | None:
    """θ's starting weights for ``init`` (``None``: keep the random initialisation).

    ``random``; ``anchor`` / ``anchor:K`` (anchor K's weights); ``merge`` / ``merge:METHOD`` (the anchors merged
    without training, MergeMany by default: :func:`~star_merge.matching.merge.merge_models` with ``spec`` and
    ``seed``); or a checkpoint folder. ``anchors()`` returns the anchors' state dicts (only called when needed).
    """
    if init == "random":
        return None
    if init == "anchor" or init.startswith("anchor:"):
        k = int(init.split(":", 1)[1]) if ":" in init else 0
        members = anchors()
        if not 0 <= k < len(members):
            raise UserError(f"init={init!r}: there are only {len(members)} anchors")
        return dict(members[k])
    if init == "merge" or init.startswith("merge:"):
        method = init.split(":", 1)[1] if ":" in init else "mergemany"
        members = anchors()
        if len(members) < 2:
            raise UserError(f"init={init!r} needs at least two anchors, got {len(members)}")
        return merge_models(list(members), method=method, spec=spec, seed=seed)[0]
    from ..modeling import load_checkpoint

    if not os.path.isdir(init):
        raise UserError(f"init={init!r} is neither 'random', 'anchor[:K]', 'merge[:METHOD]' nor a checkpoint folder")
    return load_checkpoint(init).state_dict()
