"""The entry module of an exported BMA whose members are star-merge's built-in CIFAR image classifiers
(star-cifar-resnet / -vgg / -wrn / -densenet).

Saved (with ``star_merge.models.VISION_CODE``) only into such a BMA's folder, and named by its ``auto_map``: it
registers the member models saved beside it with the wrapper, so ``trust_remote_code=True`` loads them where
star-merge is absent (as ``builtin_members.py`` does for star-mlp / star-cnn1d). star_merge never imports it.
"""

from .cifar_densenet import StarCifarDenseNetConfig, StarCifarDenseNetForImageClassification
from .cifar_resnet import StarCifarResNetConfig, StarCifarResNetForImageClassification
from .cifar_vgg import StarCifarVGGConfig, StarCifarVGGForImageClassification
from .cifar_wrn import StarCifarWRNConfig, StarCifarWRNForImageClassification
from .configuration_star_bma import StarBMAConfig
from .modeling_star_bma import SHIPPED_MEMBERS, StarBMAForImageClassification

SHIPPED_MEMBERS.update({cfg.model_type: (cfg, cls) for cfg, cls in (
    (StarCifarResNetConfig, StarCifarResNetForImageClassification),
    (StarCifarVGGConfig, StarCifarVGGForImageClassification),
    (StarCifarWRNConfig, StarCifarWRNForImageClassification),
    (StarCifarDenseNetConfig, StarCifarDenseNetForImageClassification),
)})

__all__ = ["StarBMAConfig", "StarBMAForImageClassification"]
