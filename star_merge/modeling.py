"""The one place that turns a config into a model class, a fresh model, or a loaded checkpoint.

Everything in star_merge resolves classes here (the adapters' meta-device build, population training, the
Starlight star, checkpoint loading). The self-contained ``bma/modeling_star_bma.py`` keeps its own small
resolver because it must load without star_merge installed (``trust_remote_code``).
"""

from __future__ import annotations

import os


from .errors import UserError
from .seeding import set_seed

__all__ = ["ArchitectureMismatchError", "PICKLE_SUFFIXES", "build_model", "check_same_architecture", "describe_model",
           "load_checkpoint", "load_config", "model_class_for"]

#: Weight files that are pickles (arbitrary code on load): star-merge never loads them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def model_class_for(config):
    """The class of ``config.architectures[0]`` (built-in star-merge classes first, then transformers).

    Without ``architectures`` (a config built from fields, or a timm checkpoint), the sequence- or
    image-classification class registered for the config type is used when there is one, else the base model class.
    """
    import transformers

    from .models import BUILTIN_CLASSES, register_builtin_models

    register_builtin_models()
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch in BUILTIN_CLASSES:
        return BUILTIN_CLASSES[arch]
    if arch is not None and hasattr(transformers, arch):
        cls = getattr(transformers, arch)
        if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
            raise UserError(f"config.architectures[0] = {arch!r} is not a model class; write the model's class "
                             "name, e.g. BertForSequenceClassification")
        return cls
    for auto in (transformers.AutoModelForSequenceClassification, transformers.AutoModelForImageClassification,
                 transformers.AutoModel):
        try:
            return auto._model_mapping[type(config)]
        except KeyError:
            continue
    raise UserError(
        f"cannot tell which model class to build for model_type {getattr(config, 'model_type', None)!r} "
        f"(architectures={getattr(config, 'architectures', None)}); set config.architectures"
    )


def build_model(config, seed: int | None = None):
    """A freshly initialised model of ``config``'s architecture, reproducible from ``seed``."""
    if seed is not None:
        set_seed(seed)
    return model_class_for(config)(config)


def load_config(path: str):
    """The config of a checkpoint folder (built-in star-merge model types registered first)."""
    from transformers import AutoConfig

    from .models import register_builtin_models

    register_builtin_models()
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{os.path.join(path, 'config.json')} cannot be read as a model config ({first})") from None


def load_checkpoint(path: str, device="cpu"):
    """Load an HF checkpoint folder with the class named in its config (safetensors only, no remote code)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is not a model checkpoint (no config.json)")
    files = os.listdir(path)
    if not any(f.endswith(".safetensors") for f in files):
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise UserError(
                f"{path} holds only pickle weights ({pickles[0]}); star-merge loads safetensors only. "
                "Convert it (load it yourself if you trust it, then save_pretrained) and retry"
            )
        raise FileNotFoundError(f"{path} has no model.safetensors")
    cls = model_class_for(load_config(path))
    try:
        model = cls.from_pretrained(path, use_safetensors=True)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"could not load weights from {path}: {str(e).splitlines()[0]}") from None
    return model.to(device).eval()


class ArchitectureMismatchError(UserError):
    """Two checkpoints that must share an architecture do not."""


def describe_model(model) -> str:
    """``model_type/Architecture`` of a model, for messages."""
    config = getattr(model, "config", None)
    arch = (getattr(config, "architectures", None) or [type(model).__name__])[0]
    return f"{getattr(config, 'model_type', '?')}/{arch}"


def check_same_architecture(model_a, model_b, names=("A", "B")) -> None:
    """Raise ArchitectureMismatchError unless both models have the same model type, tensors and shapes.

    The one architecture check of every comparison of two checkpoints (align, barrier, evaluate)."""
    a, b = model_a.state_dict(), model_b.state_dict()
    type_a = getattr(getattr(model_a, "config", None), "model_type", None)
    type_b = getattr(getattr(model_b, "config", None), "model_type", None)
    problem = None
    if type_a != type_b:
        problem = f"model types {type_a!r} and {type_b!r} differ"
    elif type(model_a) is not type(model_b):
        problem = f"classes {type(model_a).__name__} and {type(model_b).__name__} differ"
    elif set(a) != set(b):
        problem = f"tensor {min(set(a) ^ set(b))!r} is in only one of them"
    else:
        problem = next((f"tensor {k!r} has shape {tuple(a[k].shape)} vs {tuple(b[k].shape)}"
                        for k in a if a[k].shape != b[k].shape), None)
    if problem:
        raise ArchitectureMismatchError(
            f"checkpoints {names[0]} ({describe_model(model_a)}) and {names[1]} ({describe_model(model_b)}) have "
            f"different architectures: {problem}; compare two models of one architecture"
        )
