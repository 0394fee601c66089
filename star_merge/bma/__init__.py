"""Bayesian model averaging over the star domain of a Starlight run (Sonthalia et al., ICLR 2025, arXiv:2403.07968; see docs/bma.md).

Importing this package registers ``star-bma`` with ``AutoConfig``, ``AutoModelForSequenceClassification``,
``AutoModelForImageClassification``, ``AutoModelForCausalLM`` and ``AutoModelForMaskedLM``, so ``AutoModelFor….from_pretrained(RUN_DIR/bma)`` works without remote code.
Exported folders also carry self-contained code (``auto_map``) for ``trust_remote_code=True`` where star-merge
is not installed. See docs/bma.md.
"""

from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
)

from .configuration_star_bma import StarBMAConfig, draw_samples, parse_t_distribution
from .export import bma_predict_proba, build_bma, export_bma, load_bma, save_bma
from .modeling_star_bma import (
    HEAD_CLASSES,
    StarBMAForCausalLM,
    StarBMAForImageClassification,
    StarBMAForMaskedLM,
    StarBMAForSequenceClassification,
    StarBMAOutput,
    StarBMAPreTrainedModel,
)

AutoConfig.register(StarBMAConfig.model_type, StarBMAConfig, exist_ok=True)
AutoModelForSequenceClassification.register(StarBMAConfig, StarBMAForSequenceClassification, exist_ok=True)
AutoModelForImageClassification.register(StarBMAConfig, StarBMAForImageClassification, exist_ok=True)
AutoModelForCausalLM.register(StarBMAConfig, StarBMAForCausalLM, exist_ok=True)
AutoModelForMaskedLM.register(StarBMAConfig, StarBMAForMaskedLM, exist_ok=True)

__all__ = [
    "HEAD_CLASSES",
    "StarBMAConfig",
    "StarBMAForCausalLM",
    "StarBMAForImageClassification",
    "StarBMAForMaskedLM",
    "StarBMAForSequenceClassification",
    "StarBMAOutput",
    "StarBMAPreTrainedModel",
    "bma_predict_proba",
    "build_bma",
    "draw_samples",
    "export_bma",
    "load_bma",
    "parse_t_distribution",
    "save_bma",
]
