"""The project's own Hugging Face models: small ones for the built-in tasks (MNIST-1D), and the CIFAR
architectures of the Starlight paper (ResNet, VGG-BN, WRN, DenseNet-BC; docs/vision.md)."""

from .cifar_densenet import StarCifarDenseNetConfig, StarCifarDenseNetForImageClassification
from .cifar_resnet import StarCifarResNetConfig, StarCifarResNetForImageClassification
from .cifar_vgg import StarCifarVGGConfig, StarCifarVGGForImageClassification
from .cifar_wrn import StarCifarWRNConfig, StarCifarWRNForImageClassification
from .cnn1d import StarCNN1dConfig, StarCNN1dForClassification
from .mlp import StarMLPConfig, StarMLPForClassification
from .vision import image_processor_for

VISION_MODELS = (
    (StarCifarResNetConfig, StarCifarResNetForImageClassification),
    (StarCifarVGGConfig, StarCifarVGGForImageClassification),
    (StarCifarWRNConfig, StarCifarWRNForImageClassification),
    (StarCifarDenseNetConfig, StarCifarDenseNetForImageClassification),
)
#: model_type of every built-in image classifier (their populations read raw images with ``image_processor_for``).
VISION_MODEL_TYPES = tuple(cfg.model_type for cfg, _ in VISION_MODELS)
#: model_type of the MNIST-1D models (they read feature vectors: no transformers pipeline serves them).
FEATURE_MODEL_TYPES = (StarMLPConfig.model_type, StarCNN1dConfig.model_type)
#: model_type of every built-in model (loaded with transformers after ``import star_merge``).
BUILTIN_MODEL_TYPES = FEATURE_MODEL_TYPES + VISION_MODEL_TYPES

#: The model files a BMA of CIFAR members ships beside its weights (``trust_remote_code``; each imports only torch,
#: transformers and, relatively, the others).
VISION_CODE = ("common.py", "vision.py", "cifar_resnet.py", "cifar_vgg.py", "cifar_wrn.py", "cifar_densenet.py")

BUILTIN_CLASSES = {
    "StarMLPForClassification": StarMLPForClassification,
    "StarCNN1dForClassification": StarCNN1dForClassification,
    **{cls.__name__: cls for _, cls in VISION_MODELS},
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
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    for cfg, cls in ((StarMLPConfig, StarMLPForClassification), (StarCNN1dConfig, StarCNN1dForClassification)):
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)
        for auto in (AutoModel, AutoModelForSequenceClassification, AutoModelForAudioClassification):
            auto.register(cfg, cls, exist_ok=True)
    for cfg, cls in VISION_MODELS:
        AutoConfig.register(cfg.model_type, cfg, exist_ok=True)
        for auto in (AutoModel, AutoModelForImageClassification):
            auto.register(cfg, cls, exist_ok=True)
    _REGISTERED = True


register_builtin_models()

__all__ = [
    "StarMLPConfig",
    "StarMLPForClassification",
    "StarCNN1dConfig",
    "StarCNN1dForClassification",
    "StarCifarResNetConfig",
    "StarCifarResNetForImageClassification",
    "StarCifarVGGConfig",
    "StarCifarVGGForImageClassification",
    "StarCifarWRNConfig",
    "StarCifarWRNForImageClassification",
    "StarCifarDenseNetConfig",
    "StarCifarDenseNetForImageClassification",
    "VISION_MODELS",
    "VISION_MODEL_TYPES",
    "FEATURE_MODEL_TYPES",
    "BUILTIN_MODEL_TYPES",
    "image_processor_for",
    "BUILTIN_CLASSES",
    "VISION_CODE",
    "register_builtin_models",
]
