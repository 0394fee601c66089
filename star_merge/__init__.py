"""star-merge: permutation-aware model merging for Hugging Face models, built around Starlight."""

__version__ = "0.1.0"

from . import bma  # noqa: F401  (registers the BMA classes with the transformers Auto classes)
from .adapters import UnsupportedModelError, register_adapter, spec_for, supported_model_types
from .matching import MatchingResult, activation_matching, align, align_population, weight_matching
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
    "align",
    "activation_matching",
    "align_population",
    "MatchingResult",
    "interpolation_curve",
    "StarlightTrainer",
    "StarlightConfig",
    "align_checkpoints",
    "export_bma",
    "evaluate_run",
    "push_run",
    "task_for",
    "fold_model",
    "fold_state_dict",
    "is_folded",
    "metric_path",
]

# Lazily imported public names -> the module that defines them (they pull in data / Hub / Accelerate machinery).
_LAZY = {
    "interpolation_curve": "evaluation",
    "interpolation_curves": "evaluation",
    "InterpolationCurve": "evaluation",
    "interpolate_state_dicts": "evaluation",
    "reset_bn_stats": "batchnorm",
    "evaluate_run": "evaluation",
    "StarlightTrainer": "starlight",
    "StarlightConfig": "starlight",
    "align_checkpoints": "matching.checkpoints",
    "export_bma": "bma",
    "push_run": "hub",
    "task_for": "tasks",
    "fold_model": "adapters.folding",
    "fold_state_dict": "adapters.folding",
    "is_folded": "adapters.folding",
    "metric_path": "metrics",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'star_merge' has no attribute {name!r}")
