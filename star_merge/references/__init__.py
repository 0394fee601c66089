"""References to checkpoints -> local folders: Hub ids (``org/name[@revision]``), folders and population files,
pinned, checked and downloaded (safetensors only) before any training or alignment (:mod:`.resolve`)."""

from .resolve import (
    DOWNLOAD_PATTERNS,
    PopulationError,
    ResolvedMember,
    ResolvedMembers,
    load_reference,
    parse_source,
    read_population_file,
    resolve_members,
    resolve_reference,
)

__all__ = [
    "DOWNLOAD_PATTERNS",
    "PopulationError",
    "ResolvedMember",
    "ResolvedMembers",
    "load_reference",
    "parse_source",
    "read_population_file",
    "resolve_members",
    "resolve_reference",
]
