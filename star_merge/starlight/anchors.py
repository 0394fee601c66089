"""The anchors a :class:`~star_merge.starlight.StarlightTrainer` accepts, turned into (name, loader) pairs.

Accepted forms (mixable): checkpoint folders, Hub ids (``org/name[@revision]``) and population files (all
resolved with :func:`star_merge.references.resolve_members`), ``PreTrainedModel`` objects, ``(name, state_dict)`` and
``(name, zero-argument loader)`` pairs. Loaders are called one at a time, so a caller never needs all N state
dicts in memory at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError

__all__ = ["AnchorSource", "anchors_config", "normalize_anchors", "population_dtype", "in_star_form",
           "folded_norm_positions"]


@dataclass
class AnchorSource:
    """One anchor: its ``name``, a zero-argument ``load`` returning its state dict, and its ``config`` if known."""

    name: str
    load: Callable[[], Mapping[str, torch.Tensor]]
    config: Any = None


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    from ..modeling import load_checkpoint

    return load_checkpoint(path).state_dict()


def _from_path(path: str, name: str) -> AnchorSource:
    from ..modeling import load_config

    return AnchorSource(name, functools.partial(_load_state_dict, path), functools.partial(load_config, path))


def normalize_anchors(anchors: Sequence[Any]) -> list[AnchorSource]:
    """Every accepted anchor form as an :class:`AnchorSource` (default names ``anchor-00``, ``anchor-01``, ...)."""
    if isinstance(anchors, (str, bytes)) or not isinstance(anchors, Sequence):
        anchors = [anchors] if isinstance(anchors, (str, bytes, torch.nn.Module)) else list(anchors)
    out: list[AnchorSource] = []
    for item in anchors:
        name = f"anchor-{len(out):02d}"
        if isinstance(item, str):
            from ..references import resolve_members

            for m in resolve_members([item], role="anchor", progress=False):
                out.append(_from_path(m.path, f"anchor-{len(out):02d}"))
        elif isinstance(item, torch.nn.Module):
            out.append(AnchorSource(name, item.state_dict, getattr(item, "config", None)))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            name, value = item
            if isinstance(value, torch.nn.Module):
                out.append(AnchorSource(name, value.state_dict, getattr(value, "config", None)))
            elif isinstance(value, Mapping):
                out.append(AnchorSource(name, functools.partial(lambda sd: sd, value)))
            elif callable(value):
                out.append(AnchorSource(name, value))
            else:
                raise TypeError(f"anchor {name!r}: expected a state dict or a zero-argument loader, got {type(value).__name__}")
        else:
            raise TypeError(
                f"anchor {len(out)}: {type(item).__name__} is not a checkpoint path / Hub id, a PreTrainedModel, "
                "or a (name, state_dict | loader) pair"
            )
    names = [a.name for a in out]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"two anchors are named {dup!r}; give each (name, state_dict) pair its own name")
    return out


def anchors_config(sources: Sequence[AnchorSource]):
    """The config of the first anchor that carries one (``None`` if all are bare state dicts)."""
    for s in sources:
        if s.config is not None:
            return s.config() if callable(s.config) else s.config
    return None


def population_dtype(state_dict, names) -> torch.dtype:
    """bf16 / fp16 when every floating tensor of ``names`` has that dtype, else float32."""
    dtypes = {state_dict[n].dtype for n in names if n in state_dict and state_dict[n].is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 and dtypes <= {torch.bfloat16, torch.float16} else torch.float32


def in_star_form(unfolded: torch.nn.Module, star: torch.nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An anchor's state dict in the star's form: as it is, or folded when the star is in folded form (through
    the unfolded model, so that a tied head a checkpoint stores once is folded as a tensor of its own)."""
    if star is unfolded:
        return sd
    from ..adapters.folding import fold_state_dict

    unfolded.load_state_dict(sd, strict=False)
    return fold_state_dict(unfolded.config, unfolded.state_dict())[0]


def folded_norm_positions(unfolded: torch.nn.Module, star: torch.nn.Module, layout) -> torch.Tensor:
    """Positions in the flat star of the norm weights that folding set to 1 (empty unless the star is folded):
    the trainer keeps them at 1 after every step (the reading layers absorb any scale; nothing is lost)."""
    if star is unfolded:
        return torch.zeros(0, dtype=torch.long)
    from ..adapters.folding import folding_plan

    at = dict(zip(layout.names, layout.offsets))
    sizes = dict(zip(layout.names, layout.numels))
    plan = folding_plan(star.config, {k: tuple(v.shape) for k, v in star.state_dict().items()})
    spans = [torch.arange(at[norm], at[norm] + sizes[norm]) for norm, readers in plan if readers and norm in at]
    return torch.cat(spans) if spans else torch.zeros(0, dtype=torch.long)
