"""Aligning models: one model to another (:func:`align`, the one way every caller aligns two checkpoints), and
a population to one reference (:func:`align_population`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..groups import check_symmetry
from ..spec import PermutationSpec, apply_permutation
from .activation_matching import activation_matching
from .weight_matching import MatchingResult, presolve_option, weight_matching

__all__ = ["ALIGN_METHODS", "AlignmentError", "AlignmentRecord", "align", "align_population", "in_symmetry_form"]

#: How B can be aligned to A: weight matching, activation matching over data, or not at all.
ALIGN_METHODS = ("weight", "activation", "none")


class AlignmentError(UserError):
    """An alignment cannot be done as asked (unknown method, activation matching without sites or data)."""


@dataclass
class AlignmentRecord:
    """How B was aligned: the method, and (unless ``none``) the matching result (``perm`` maps B to A's frame)."""

    method: str
    result: MatchingResult | None = None
    symmetry: str = "permutation"

    def to_dict(self) -> dict[str, Any]:
        if self.result is None:  # method "none": nothing was aligned, in no symmetry
            return {"method": self.method} if self.method == "none" else {"method": self.method,
                                                                            "symmetry": self.symmetry}
        return {"method": self.method, "symmetry": self.symmetry, "objective": self.result.objective,
                "iterations": self.result.iterations}


def in_symmetry_form(model, symmetry: str):
    """``model`` in the form ``symmetry`` aligns: itself for permutations; for ``orthogonal`` a folded copy
    (norm weights 1, ``adapters/folding.py``; a new model even when it is folded already) when its family has a
    folded form, else itself."""
    if check_symmetry(symmetry) == "permutation" or not isinstance(model, torch.nn.Module):
        return model
    from ..adapters.folding import can_fold, fold_model

    config = getattr(model, "config", None)
    return model if config is None or not can_fold(config) else fold_model(model)


def _check_folded(a) -> None:
    from ..adapters.folding import can_fold, is_folded

    config = getattr(a, "config", None)
    if isinstance(a, torch.nn.Module) and config is not None and can_fold(config) and not is_folded(
            config, a.state_dict()):
        raise AlignmentError("symmetry 'orthogonal' aligns models in folded form, and A is not: pass "
                             "star_merge.fold_model(A) (align_checkpoints, barrier and evaluate fold for you)")


def _cpu_state_dict(model_or_sd, clone: bool) -> dict[str, torch.Tensor]:
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    return {k: (v.detach().cpu().clone() if clone else v.detach().cpu()) for k, v in sd.items()}


def _activation_sites(model) -> Mapping[str, str]:
    sites = getattr(model, "activation_sites", None)
    try:
        sites = sites() if callable(sites) else None
    except NotImplementedError:
        sites = None
    if sites is None:
        config = getattr(model, "config", None)
        name = getattr(config, "model_type", None) or type(model).__name__
        raise AlignmentError(
            f"method 'activation' needs a model that exposes activation_sites() (the built-in star models); "
            f"{name} does not. Use method 'weight'"
        )
    return sites


def _as_batches(data) -> Iterable[Mapping[str, torch.Tensor]]:
    """``data`` as an iterable of input batches: a DataLoader-like iterable, or a map-style dataset."""
    if isinstance(data, torch.utils.data.Dataset) or hasattr(data, "column_names"):
        return torch.utils.data.DataLoader(data, batch_size=256)
    return data


def align(
    spec: PermutationSpec | None,
    a,
    b,
    method: str = "weight",
    *,
    data=None,
    seed: int = 0,
    init_perm: Mapping[str, torch.Tensor] | None = None,
    progress: bool = False,
    symmetry: str = "permutation",
    presolve: bool | str = "auto",
) -> tuple[dict[str, torch.Tensor], AlignmentRecord]:
    """B's state dict permuted into A's frame (on the CPU), and the record of how.

    ``a``, ``b``: models, or state dicts for weight matching. ``spec``: ``None`` takes A's (:func:`spec_for`).
    ``method``: ``weight`` (weight matching with ``seed``, warm-started from ``init_perm``, ``presolve`` as
    :func:`weight_matching`'s: ``auto``, ``always``/True, ``never``/False), ``activation``
    (activation matching over ``data``, batches of model inputs or a dataset; models with
    ``activation_sites()``) or ``none`` (B as it is). ``symmetry``: ``permutation``, or ``orthogonal``
    (orthogonal maps where the family declares them, permutations elsewhere): A must then be in folded form
    (``fold_model``), B is folded here when it is a model that is not, and the result is B folded, in A's frame.
    """
    if method not in ALIGN_METHODS:
        raise AlignmentError(f"unknown alignment method {method!r}; use one of {', '.join(ALIGN_METHODS)}")
    if check_symmetry(symmetry) == "orthogonal":
        _check_folded(a)
        b = in_symmetry_form(b, symmetry)
    sd_b = _cpu_state_dict(b, clone=True)
    if method == "none":
        return sd_b, AlignmentRecord("none", symmetry=symmetry)
    if spec is None:
        from ..adapters import spec_for

        spec = spec_for(a, symmetry=symmetry)
    if method == "weight":
        result = weight_matching(spec, _cpu_state_dict(a, clone=False), sd_b, seed=seed, init_perm=init_perm,
                                 presolve=presolve_option(presolve))
    else:
        sites = _activation_sites(a)
        if data is None:
            raise AlignmentError("method 'activation' needs data: pass data= (batches of model inputs or a dataset)")
        result = activation_matching(spec, a, b, _as_batches(data), sites=sites, progress=progress)
    return apply_permutation(spec, result.perm, sd_b), AlignmentRecord(method, result, symmetry)


def align_population(
    spec: PermutationSpec,
    reference: Mapping[str, torch.Tensor],
    state_dicts: Sequence[Mapping[str, torch.Tensor]],
    seed: int = 0,
    init_perms: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    progress: bool = True,
    max_iter: int = 100,
    presolve: bool | str = "auto",
) -> tuple[list[dict[str, torch.Tensor]], list[MatchingResult]]:
    """Weight-match every state dict to ``reference``; returns (aligned state dicts, matching results).

    Member ``i`` uses seed ``seed + i``; ``init_perms[i]`` warm-starts it; ``presolve`` as :func:`align`'s.
    """
    aligned, results = [], []
    for i, sd in enumerate(tqdm(state_dicts, desc="aligning", disable=not progress, leave=False)):
        init = init_perms[i] if init_perms is not None else None
        res = weight_matching(spec, reference, sd, seed=seed + i, init_perm=init, max_iter=max_iter,
                              presolve=presolve_option(presolve))
        results.append(res)
        aligned.append(apply_permutation(spec, res.perm, sd))
    return aligned, results
