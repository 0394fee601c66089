"""The entry module of an exported BMA whose members are star-merge's built-in star-mlp / star-cnn1d models.

Saved (with ``common.py``, ``mlp.py`` and ``cnn1d.py``) only into such a BMA's folder, and named by its
``auto_map``: it registers the member models saved beside it with the wrapper, so ``trust_remote_code=True``
loads them where star-merge is absent. A BMA of transformers members (BERT, ViT, ...) ships neither this file nor
the built-in model files. Only meaningful in an exported folder; star_merge itself never imports it.
"""

from .cnn1d import StarCNN1dConfig, StarCNN1dForClassification
from .configuration_star_bma import StarBMAConfig
from .mlp import StarMLPConfig, StarMLPForClassification
from .modeling_star_bma import SHIPPED_MEMBERS, StarBMAForSequenceClassification

SHIPPED_MEMBERS.update({
    StarMLPConfig.model_type: (StarMLPConfig, StarMLPForClassification),
    StarCNN1dConfig.model_type: (StarCNN1dConfig, StarCNN1dForClassification),
})

__all__ = ["StarBMAConfig", "StarBMAForSequenceClassification"]
