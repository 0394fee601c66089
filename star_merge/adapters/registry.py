"""The adapter registry: ``config.model_type`` -> a builder that writes the model's permutation spec.

Each adapter module registers itself (``register_adapter("llama", build_llama_spec)``); the modules are
found in this folder with ``pkgutil``, so nothing central lists them (a new family is one new module). A builder is called as ``builder(config, shapes, **options)`` where ``shapes`` maps
every state-dict tensor name of the concrete model (task head included) to its shape, and returns a
:class:`~star_merge.spec.PermutationSpec` (or an ``axes_to_perm`` mapping, turned into one here).
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..discovery import import_submodules
from ..spec import PermutationSpec, SpecError
from ..errors import UserError

__all__ = ["register_adapter", "spec_for", "supported_model_types", "UnsupportedModelError", "model_shapes"]

SpecBuilder = Callable[..., "PermutationSpec | Mapping"]
_REGISTRY: dict[str, SpecBuilder] = {}


class UnsupportedModelError(SpecError):
    """No adapter is registered for a model type."""


def register_adapter(model_type: str, builder: SpecBuilder | None = None, *, overwrite: bool = False):
    """Register ``builder`` for ``model_type``; usable as a decorator (``@register_adapter("mlp")``)."""

    def _register(fn: SpecBuilder) -> SpecBuilder:
        if model_type in _REGISTRY and not overwrite and _REGISTRY[model_type] is not fn:
            raise UserError(
                f"an adapter for model_type {model_type!r} is already registered; pass overwrite=True to replace it"
            )
        _REGISTRY[model_type] = fn
        return fn

    return _register(builder) if builder is not None else _register


def supported_model_types() -> list[str]:
    _load_builtin_adapters()
    return sorted(_REGISTRY)


# Modules of this package that are infrastructure, not adapters.
_NOT_ADAPTERS = {"registry", "layout", "heads", "folding"}


def _load_builtin_adapters() -> None:
    """Import every adapter module of this folder; importing one registers its adapters."""
    import_submodules(__package__, __file__, skip=_NOT_ADAPTERS)


def model_shapes(model_or_config) -> dict[str, tuple[int, ...]]:
    """State-dict tensor shapes of a model, or of the model a config describes (built on the meta device)."""
    if isinstance(model_or_config, torch.nn.Module):
        return {k: tuple(v.shape) for k, v in model_or_config.state_dict().items()}
    model = build_meta_model(model_or_config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def build_meta_model(config):
    """Instantiate the architecture named in ``config.architectures`` (or the base model) without memory."""
    from ..modeling import model_class_for

    cls = model_class_for(config)
    with torch.device("meta"):
        return cls(config)


def spec_for(model_or_config, **options) -> PermutationSpec:
    """The permutation spec of a Hugging Face model (or config), from the adapter for its ``model_type``.

    ``options`` go to the adapter (e.g. ``permute_residual=False``, ``permute_heads=False`` for
    transformer families). With a config, the task head is taken from ``config.architectures``.
    ``symmetry="orthogonal"``: orthogonal groups where the family declares them (the residual stream of a model in
    folded form, ``adapters/folding.py``), permutations elsewhere; adapters without orthogonal groups ignore it.
    """
    _load_builtin_adapters()
    from ..groups import check_symmetry

    symmetry = check_symmetry(options.pop("symmetry", "permutation"))
    if isinstance(model_or_config, torch.nn.Module):
        config = getattr(model_or_config, "config", None)
        if config is None:
            raise UnsupportedModelError(
                f"{type(model_or_config).__name__} is a plain nn.Module without a Hugging Face config; "
                "build a PermutationSpec by hand (PermutationSpec.from_axes) or wrap it in a PreTrainedModel "
                "and register an adapter with star_merge.register_adapter(model_type, builder)"
            )
    else:
        config = model_or_config
    model_type = getattr(config, "model_type", None)
    builder = _REGISTRY.get(model_type)
    if builder is None:
        raise UnsupportedModelError(
            f"no permutation adapter for model_type {model_type!r}; supported: {', '.join(sorted(_REGISTRY))}. "
            "Register one with star_merge.register_adapter(model_type, builder) (see docs/adapters.md)"
        )
    import inspect

    if symmetry == "orthogonal" and "symmetry" in inspect.signature(builder).parameters:
        options["symmetry"] = symmetry
    shapes = model_shapes(model_or_config)
    spec = builder(config, shapes, **options)
    if not isinstance(spec, PermutationSpec):
        spec = PermutationSpec.from_axes(spec, shapes)
    uncovered = [k for k in shapes if k not in spec.axes_to_perm]
    if uncovered:
        raise SpecError(
            f"the {model_type!r} adapter does not cover tensor {uncovered[0]!r}"
            f"{f' (and {len(uncovered) - 1} more)' if len(uncovered) > 1 else ''}; extend the adapter"
        )
    return spec
