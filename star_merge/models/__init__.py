"""The project's own small Hugging Face models for the built-in tasks (MNIST-1D)."""

from .cnn1d import StarCNN1dConfig, StarCNN1dForClassification
from .mlp import StarMLPConfig, StarMLPForClassification

BUILTIN_CLASSES = {
    "StarMLPForClassification": StarMLPForClassification,
    "StarCNN1dForClassification": StarCNN1dForClassification,
}

_REGISTERED = False


def register_builtin_models() -> None:
    """Register the built-in configs/models with the transformers Auto classes (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForAudioClassification,
        AutoModelForSequenceClassification,
    )

    for cfg, cls in ((StarMLPConfig, StarMLPForClassification), (StarCNN1dConfig, StarCNN1dForClassification)):
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)
        for auto in (AutoModel, AutoModelForSequenceClassification, AutoModelForAudioClassification):
            auto.register(cfg, cls, exist_ok=True)
    _REGISTERED = True


register_builtin_models()

__all__ = [
    "StarMLPConfig",
    "StarMLPForClassification",
    "StarCNN1dConfig",
    "StarCNN1dForClassification",
    "BUILTIN_CLASSES",
    "register_builtin_models",
]
