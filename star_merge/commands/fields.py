"""Argument fields several subcommands share: weight matching's presolve and the symmetry group."""

from __future__ import annotations

from dataclasses import field

from ..groups import SYMMETRIES
from ..matching.weight_matching import PRESOLVE_FLAGS, PRESOLVE_HELP

__all__ = ["presolve_field", "symmetry_field"]


def presolve_field(default: str | None = "auto", default_help: str = ""):
    """``--presolve {auto,always,never}`` (weight matching's presolve); ``default_help`` says what ``None`` means."""
    return field(default=default, metadata={"choices": list(PRESOLVE_FLAGS), "help": PRESOLVE_HELP + default_help})


def symmetry_field(help: str, default: str | None = "permutation"):
    """``--symmetry {permutation,orthogonal}``; ``help`` says what orthogonal does for this command."""
    return field(default=default, metadata={"choices": list(SYMMETRIES), "help": help})
