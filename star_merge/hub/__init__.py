"""The Hugging Face Hub, both directions: populations in (:func:`resolve_members`), runs out (:func:`push_run`)."""

from .push import PlannedFile, PushArguments, PushError, make_parser, push_run, run, upload_plan
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
    "DOWNLOAD_PATTERNS",
    "PlannedFile",
    "PopulationError",
    "PushError",
    "ResolvedMember",
    "ResolvedMembers",
    "PushArguments",
    "make_parser",
    "parse_source",
    "push_run",
    "read_population_file",
    "resolve_members",
    "run",
    "upload_plan",
]
