"""Which model classes (task heads) each adapter covers, for ``star-merge adapters`` and the docs.

An adapter module declares its heads next to its ``register_adapter`` call::

    declare_heads("gpt_neox", "GPTNeoXModel", "GPTNeoXForCausalLM", ...)

The declaration is a listing, not a gate: ``spec_for`` accepts any model whose tensors the adapter
covers. tests/test_adapters.py checks the listing both ways: every declared class gets a spec, and every
other class transformers registers for the model type is refused by the adapter.
"""

from __future__ import annotations

__all__ = ["declare_heads", "supported_heads"]

_HEADS: dict[str, tuple[str, ...]] = {}


def declare_heads(model_type: str, *class_names: str) -> None:
    """Record the model classes of ``model_type`` its adapter covers (replaces an earlier declaration)."""
    _HEADS[model_type] = tuple(class_names)


def supported_heads(model_type: str) -> tuple[str, ...]:
    """The declared model classes of ``model_type`` (empty when its adapter declared none)."""
    from .registry import supported_model_types

    supported_model_types()  # imports the built-in adapters, which declare their heads
    return _HEADS.get(model_type, ())
