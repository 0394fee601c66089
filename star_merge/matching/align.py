"""Many-model alignment: bring a population into the permutation frame of one reference."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..spec import PermutationSpec, apply_permutation
from .weight_matching import MatchingResult, weight_matching

__all__ = ["align_population"]


def align_population(
    spec: PermutationSpec,
    reference: Mapping[str, torch.Tensor],
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    seed: int = 0,
    init_perms: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    progress: bool = True,
    max_iter: int = 100,
) -> tuple[list[dict[str, torch.Tensor]], list[MatchingResult]]:
    """Weight-match every state dict to ``reference``; returns (aligned state dicts, matching results).

    Member ``i`` uses seed ``seed + i``; ``init_perms[i]`` warm-starts it.
    """
    aligned, results = [], []
    for i, sd in enumerate(tqdm(state_dicts, desc="aligning", disable=not progress, leave=False)):
        init = init_perms[i] if init_perms is not None else None
        res = weight_matching(spec, reference, sd, seed=seed + i, init_perm=init, max_iter=max_iter)
        results.append(res)
        aligned.append(apply_permutation(spec, res.perm, sd))
    return aligned, results
