"""Permutation-spec adapters for model families, keyed by ``config.model_type``."""

from .registry import (
    UnsupportedModelError,
    build_meta_model,
    model_shapes,
    register_adapter,
    spec_for,
    supported_model_types,
)

__all__ = [
    "register_adapter",
    "spec_for",
    "supported_model_types",
    "UnsupportedModelError",
    "model_shapes",
    "build_meta_model",
]
