"""One argument system: dataclass arguments, ``--config file.yaml`` defaults, flags override them.

The recipes and every ``star-merge`` subcommand parse with :class:`ArgumentsParser` (transformers'
``HfArgumentParser`` plus YAML defaults and positional fields). Subcommands follow TRL's ``make_parser(subparsers)``
pattern: ``subparsers`` is created with ``parser_class=ArgumentsParser`` and each command module adds its parser
with ``subparsers.add_parser(name, dataclass_types=[...], ...)``. A field with ``metadata={"positional": True}``
is a positional argument (``metavar`` and ``help`` taken from the metadata).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

from transformers import HfArgumentParser

from .errors import UserError, flag_hint

__all__ = ["ArgumentsParser", "ConfigError", "add_command", "parse_dataclasses_with_config", "positional"]


class ConfigError(UserError):
    """A YAML config or command line is not valid for these arguments."""


def positional(metavar: str, help: str, **kwargs):
    """A required positional dataclass field (``star-merge evaluate RUN_DIR``)."""
    return dataclasses.field(metadata={"positional": True, "metavar": metavar, "help": help}, **kwargs)


class ArgumentsParser(HfArgumentParser):
    """``HfArgumentParser`` with YAML defaults (``--config``) and positional fields; :meth:`parse` is the entry."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types or [], **kwargs)

    @staticmethod
    def _parse_dataclass_field(parser, field: dataclasses.Field):
        meta = dict(field.metadata)
        if meta.pop("positional", False):
            parser.add_argument(field.name, metavar=meta.get("metavar", field.name.upper()), help=meta.get("help"),
                                type=str)
            return
        if "help" in meta:  # argparse formats help with %; a literal % in a help string must not break --help
            field = _with_metadata(field, {**field.metadata, "help": meta["help"].replace("%", "%%")})
        HfArgumentParser._parse_dataclass_field(parser, field)

    def error(self, message: str):
        """A usage error is a :class:`ConfigError` (one line, exit 2 through the error handler), never argparse's
        usage dump; a misspelled flag names the closest one."""
        raise ConfigError(f"{message}{flag_hint(message, self._option_string_actions)}; see {self.prog} --help")

    def _known_fields(self) -> set[str]:
        return {f.name for t in self.dataclass_types for f in dataclasses.fields(t)}

    def parse(self, argv: Sequence[str] | None = None) -> tuple[list[Any], str | None]:
        """One instance per dataclass type; returns (instances, name of the ``--config`` file or None).

        ``--config PATH`` names a YAML mapping whose keys must be fields of the dataclasses (unknown keys are an
        error naming them); those values are defaults that explicit flags override.
        """
        import yaml

        argv = list(sys.argv[1:] if argv is None else argv)
        config_path = None
        if "--config" in argv:
            i = argv.index("--config")
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file path")
            config_path = argv[i + 1]
            del argv[i : i + 2]
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
            unknown = sorted(set(values) - self._known_fields())
            if unknown:
                raise ConfigError(f"{config_path}: unknown key(s) {', '.join(unknown)}; see --help for valid arguments")
            self.set_defaults(**{k: json.dumps(v) if isinstance(v, dict) else v for k, v in values.items()})
        namespace = self.parse_args(argv)
        name = os.path.splitext(os.path.basename(config_path))[0] if config_path else None
        return self.to_dataclasses(namespace), name

    def to_dataclasses(self, namespace) -> list[Any]:
        values = vars(namespace)
        out = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            out.append(dtype(**{k: v for k, v in values.items() if k in names}))
        return out


def _with_metadata(field: dataclasses.Field, metadata: dict) -> dataclasses.Field:
    import copy
    import types

    new = copy.copy(field)
    new.metadata = types.MappingProxyType(metadata)
    return new


def parse_dataclasses_with_config(types: Sequence[type], argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse ``argv`` into one instance per dataclass in ``types``; returns (instances, config name or None)."""
    return ArgumentsParser(list(types), prog=prog).parse(argv)


def add_command(subparsers, name: str, dataclass_types: Sequence[type], handler, help: str, description: str | None = None):
    """Add subcommand ``name`` (``subparsers`` made with ``parser_class=ArgumentsParser``); ``handler`` receives one
    instance per dataclass type and returns the exit status."""
    p = subparsers.add_parser(name, dataclass_types=list(dataclass_types), help=help, description=description or help)
    p.set_defaults(func=handler)
    return p
