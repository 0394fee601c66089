"""The Hugging Face Hub, both directions: populations in (:func:`resolve_members`), runs out (:func:`push_run`).

Names are imported on first use, so that reading a reference (:mod:`.resolve`, floor 4) never loads the
publishing side (:mod:`.push`, the model cards; floor 8).
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
        return getattr(importlib.import_module(f".{'push' if name in _PUSH else 'resolve'}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
