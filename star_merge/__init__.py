"""star-merge: permutation-aware model merging for Hugging Face models, built around Starlight."""

__version__ = "0.1.0"

from . import bma  # noqa: F401  (registers the BMA classes with the transformers Auto classes)
from .adapters import UnsupportedModelError, register_adapter, spec_for, supported_model_types
from .matching import MatchingResult, activation_matching, align_population, weight_matching
from .spec import (
    AxisPerm,
    PermutationSpec,
    SpecError,
    apply_permutation,
    compose_permutations,
    identity_permutation,
    inverse_permutation,
    random_permutation,
)

__all__ = [
    "AxisPerm",
    "PermutationSpec",
    "SpecError",
    "UnsupportedModelError",
    "apply_permutation",
    "compose_permutations",
    "identity_permutation",
    "inverse_permutation",
    "random_permutation",
    "register_adapter",
    "spec_for",
    "supported_model_types",
    "weight_matching",
    "activation_matching",
    "align_population",
    "MatchingResult",
    "interpolation_curve",
]


def __getattr__(name):  # lazy: connectivity pulls in data loading machinery
    if name in ("interpolation_curve", "InterpolationCurve", "interpolate_state_dicts", "reset_bn_stats"):
        from . import connectivity

        return getattr(connectivity, name)
    raise AttributeError(f"module 'star_merge' has no attribute {name!r}")
