"""Adapter for timm models in transformers (``TimmWrapperForImageClassification``, model_type ``timm_wrapper``).

A wrapped timm model's tensors live under ``timm_model.`` and their layout depends on the timm architecture, so
this adapter dispatches on ``config.architecture`` (``resnet18``, ``vgg11_bn``, ``vit_tiny_patch16_224`` …) to a
family builder registered with :func:`register_timm_family` (the family modules ``timm_cnn.py`` and
``timm_transformer.py``). A family builder is called as ``builder(config, axes, **options)`` with an
:class:`~star_merge.adapters.layout.AxesCollector` whose prefix is the timm model's (``"timm_model."``; ``""``
for a state dict as timm itself saves it) and returns nothing: :func:`build_timm_spec` builds the spec, so a
tensor the family does not place is an error naming it.

Families whose hyper-parameters are not visible in the tensor shapes (a ViT's number of heads) read them from
the timm model built on the meta device (:func:`meta_timm_model`).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..spec import PermutationSpec, SpecError
from .heads import declare_heads
from .layout import AxesCollector
from .registry import UnsupportedModelError, build_meta_model, register_adapter

__all__ = ["register_timm_family", "timm_families", "build_timm_spec", "meta_timm_model", "TIMM_PREFIX"]

TIMM_PREFIX = "timm_model."

FamilyBuilder = Callable[..., None]
_FAMILIES: list[tuple[str, re.Pattern, FamilyBuilder]] = []


def register_timm_family(name: str, pattern: str, builder: FamilyBuilder) -> FamilyBuilder:
    """Route timm architectures whose name fully matches ``pattern`` (a regular expression) to ``builder``."""
    _FAMILIES[:] = [f for f in _FAMILIES if f[0] != name]
    _FAMILIES.append((name, re.compile(pattern), builder))
    return builder


def timm_families() -> dict[str, str]:
    """Family name -> the architecture pattern it covers."""
    return {name: pattern.pattern for name, pattern, _ in _FAMILIES}


def _family_for(architecture: str) -> tuple[str, FamilyBuilder]:
    for name, pattern, builder in _FAMILIES:
        if pattern.fullmatch(architecture):
            return name, builder
    raise UnsupportedModelError(
        f"no timm family adapter for architecture {architecture!r}; supported families: "
        + ", ".join(f"{n} ({p})" for n, p in timm_families().items())
        + ". Register one with star_merge.adapters.timm_wrapper.register_timm_family(name, pattern, builder)"
    )


def meta_timm_model(config):
    """The timm module of ``config``'s model, built on the meta device (no memory, no weights)."""
    model = build_meta_model(config)
    return getattr(model, "timm_model", model)


def _prefix(shapes) -> str:
    return TIMM_PREFIX if any(k.startswith(TIMM_PREFIX) for k in shapes) else ""


@register_adapter("timm_wrapper")
def build_timm_spec(config, shapes, **options) -> PermutationSpec:
    """Permutation spec of a wrapped timm model, from the family adapter for ``config.architecture``."""
    architecture = getattr(config, "architecture", None)
    if not architecture:
        raise SpecError("a timm_wrapper config without 'architecture'; is config.json the one timm wrote?")
    family, builder = _family_for(architecture)
    axes = AxesCollector(f"timm_wrapper/{family}", shapes, _prefix(shapes))
    builder(config, axes, **options)
    return axes.build()


def check_ungrouped(axes: AxesCollector, conv: str, in_size: int) -> None:
    """Grouped convolutions (ResNeXt's cardinality) tie units in groups, which a permutation would mix."""
    got = axes.shape(f"{conv}.weight")[1]
    if got != in_size:
        raise SpecError(
            f"{axes.prefix}{conv} is a grouped convolution ({in_size} input channels in groups of {got}); "
            f"the {axes.model_type!r} adapter permutes ungrouped convolutions only (no ResNeXt cardinality)"
        )


declare_heads("timm_wrapper", "TimmWrapperForImageClassification")
