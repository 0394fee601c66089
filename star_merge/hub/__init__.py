"""The Hugging Face Hub, both directions: populations in (:func:`resolve_members`), runs out (:func:`push_run`)."""

from .push import PlannedFile, PushError, add_parser, push_run, run, upload_plan
from .resolve import (
    DOWNLOAD_PATTERNS,
    PopulationError,
    ResolvedMember,
    ResolvedMembers,
    parse_source,
    read_population_file,
    resolve_members,
)

__all__ = [
    "resolve_members",
    "ResolvedMember",
    "ResolvedMembers",
    "PopulationError",
    "parse_source",
    "read_population_file",
    "DOWNLOAD_PATTERNS",
    "push_run",
    "upload_plan",
    "PlannedFile",
    "PushError",
    "add_parser",
    "run",
]
