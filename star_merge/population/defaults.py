"""Per-architecture defaults of a trained population's recipe: what a config or command line leaves unset.

The built-in CIFAR architectures (``star-cifar-resnet`` / ``-vgg`` / ``-wrn`` / ``-densenet``) default to the
Starlight paper's recipe: SGD with Nesterov momentum 0.9 (``population_optimizer: sgd``), learning rate 0.1,
weight decay 5e-4, a cosine schedule, and on raw images a random crop with 4 pixels of padding and a horizontal
flip (``augment``) after per-channel normalisation (their image processor, ``models.image_processor_for``).
Every other architecture keeps the generic defaults (AdamW, 1e-3, no weight decay, no augmentation).
"""

from __future__ import annotations

from ..models import VISION_MODEL_TYPES

__all__ = ["GENERIC_RECIPE", "PAPER_CIFAR_RECIPE", "RECIPE_DEFAULTS", "recipe_defaults"]

GENERIC_RECIPE = {"population_optimizer": "adamw", "population_learning_rate": 1e-3, "population_weight_decay": 0.0,
                  "augment": False}
PAPER_CIFAR_RECIPE = {"population_optimizer": "sgd", "population_learning_rate": 0.1, "population_weight_decay": 5e-4,
                      "augment": True}
#: model_type -> the recipe fields it changes from :data:`GENERIC_RECIPE`.
RECIPE_DEFAULTS: dict[str, dict] = {model_type: PAPER_CIFAR_RECIPE for model_type in VISION_MODEL_TYPES}


def recipe_defaults(model_type: str) -> dict:
    """The defaults of a population of ``model_type`` (population fields and the data's ``augment``)."""
    return {**GENERIC_RECIPE, **RECIPE_DEFAULTS.get(model_type, {})}
