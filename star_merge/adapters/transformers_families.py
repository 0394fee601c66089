"""Permutation-spec adapters for Hugging Face transformers model families.

Importing this module registers one adapter per ``model_type``: ``resnet``, ``vit``, ``bert``,
``roberta``, ``gpt2``, ``gpt_neox``, ``llama``, ``mistral`` and ``qwen2``. Each family lives in its own
module; see docs/adapters.md for the permutations each one defines and its options.
"""

from __future__ import annotations

from .bert import build_bert_spec
from .gpt2 import build_gpt2_spec
from .gpt_neox import build_gpt_neox_spec
from .llama import build_llama_spec
from .resnet import build_resnet_spec
from .vit import build_vit_spec

__all__ = [
    "build_bert_spec",
    "build_gpt2_spec",
    "build_gpt_neox_spec",
    "build_llama_spec",
    "build_resnet_spec",
    "build_vit_spec",
]
