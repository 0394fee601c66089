"""The Hugging Face Hub, both directions: populations in (:func:`resolve_members`), runs out (:func:`push_run`).

Resolving lives in :mod:`star_merge.references` (floor 4: matching, evaluation and training read references);
its names are re-exported here. Names are imported on first use, so that reading a reference never loads the
publishing side (:mod:`.push`, the model cards).
"""

import importlib

__all__ = [
    "DOWNLOAD_PATTERNS",
    "PlannedFile",
    "PopulationError",
    "PushError",
    "ResolvedMember",
    "ResolvedMembers",
    "parse_source",
    "push_run",
    "read_population_file",
    "resolve_members",
    "resolve_reference",
    "upload_plan",
]

_PUSH = {"PlannedFile", "PushError", "push_run", "upload_plan"}


def __getattr__(name):
    if name in __all__:
        module = f"{__name__}.push" if name in _PUSH else "star_merge.references"
        return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
