"""What determines a population member, recorded beside it and compared before it is reused.

A member folder's ``training_info.json`` carries ``population_settings``: the architecture and its config,
the training recipe, the dataset arguments and the seed. A member is reused only when all of them equal
what the current run asks for; the first difference is named in the error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass

from ..errors import UserError

__all__ = ["member_settings", "first_difference", "read_json"]

_VOLATILE_CONFIG_KEYS = ("transformers_version", "_name_or_path", "_commit_hash", "dtype", "torch_dtype")  # set by loading


def read_json(path: str) -> dict:
    """``json.load`` with an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); restore it or delete it to recreate it") from None


def member_settings(model_config, train_args, data: dict | None, seed: int) -> dict:
    """Every setting that determines a trained member, as plain JSON values."""
    config = {k: v for k, v in model_config.to_dict().items() if k not in _VOLATILE_CONFIG_KEYS}
    settings = {
        "model_type": model_config.model_type,
        "model_config": config,
        "train_args": asdict(train_args) if is_dataclass(train_args) else dict(train_args),
        "data": data,
        "seed": seed,
    }
    return json.loads(json.dumps(settings, sort_keys=True, default=str))


def first_difference(stored, wanted, prefix: str = "") -> str | None:
    """``"key: stored -> wanted"`` for the first differing (nested) key, or None if equal."""
    if isinstance(stored, dict) and isinstance(wanted, dict):
        for key in sorted(set(stored) | set(wanted)):
            diff = first_difference(stored.get(key), wanted.get(key), f"{prefix}{key}.")
            if diff is not None:
                return diff
        return None
    if stored != wanted:
        return f"{prefix.rstrip('.')}: trained with {stored!r}, this run asks for {wanted!r}"
    return None
