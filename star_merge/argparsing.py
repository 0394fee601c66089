"""Dataclass arguments with ``--config file.yaml``: YAML values become defaults, CLI flags override them."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Sequence

__all__ = ["parse_dataclasses_with_config", "ConfigError"]


class ConfigError(ValueError):
    """A YAML config or command line is not valid for these arguments."""


def _field_names(types) -> dict[str, type]:
    return {f.name: t for t in types for f in dataclasses.fields(t)}


def parse_dataclasses_with_config(types: Sequence[type], argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse ``argv`` into one instance per dataclass in ``types``; returns (instances, config name or None).

    ``--config PATH`` names a YAML mapping whose keys must be fields of ``types`` (unknown keys are an
    error naming them); those values are defaults that explicit flags override.
    """
    import yaml
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ConfigError("--config needs a YAML file path")
        config_path = argv[i + 1]
        del argv[i : i + 2]
    parser = HfArgumentParser(list(types), prog=prog)
    if config_path is not None:
        if not os.path.isfile(config_path):
            raise ConfigError(f"config file {config_path} does not exist")
        try:
            with open(config_path) as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            where = getattr(e, "problem_mark", None)
            at = f" at line {where.line + 1}" if where is not None else ""
            raise ConfigError(f"{config_path} is not valid YAML{at}; fix it or pass the values as flags") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{config_path} must hold a YAML mapping of argument names to values")
        known = _field_names(types)
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{config_path}: unknown key(s) {', '.join(unknown)}; see --help for valid arguments")
        for k, v in list(values.items()):
            if isinstance(v, (dict,)):
                values[k] = json.dumps(v)  # JSON-valued string fields (e.g. model_config)
        parser.set_defaults(**values)
    instances = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    name = os.path.splitext(os.path.basename(config_path))[0] if config_path else None
    return instances, name
