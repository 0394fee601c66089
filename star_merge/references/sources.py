"""Population sources: what a member can be (``org/name[@rev]``, a folder, a population file), parsed.

The parsed :class:`Source` records are pinned, checked and downloaded by :mod:`.resolve`.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..errors import UserError
from ..modeling import PICKLE_SUFFIXES

__all__ = [
    "COMMIT_SHA",
    "DOWNLOAD_PATTERNS",
    "ROLE_KEYS",
    "PopulationError",
    "ResolvedMember",
    "ResolvedMembers",
    "parse_source",
    "Source",
    "cache_root",
    "check_weight_files",
    "expand_sources",
    "first_line",
    "offline_hint",
    "parallel_map",
    "read_population_file",
]

logger = logging.getLogger(__name__)

#: Files fetched for a Hub member: config, safetensors weights, tokenizer / preprocessor files.
#: Never pickles (``*.bin``, ``*.pt``) and never code (star-merge does not run remote code).
DOWNLOAD_PATTERNS = [
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.jinja",
]
COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
ROLE_KEYS = {"anchor": ("anchors", "anchor"), "held-out": ("held_out", "held-out", "heldout")}

T = TypeVar("T")
R = TypeVar("R")


class PopulationError(UserError):
    """A population member cannot be used: unknown id or revision, no safetensors, mixed architectures."""


@dataclass(frozen=True)
class ResolvedMember:
    """One population member on local disk.

    ``source`` is what the user wrote; ``repo_id``/``revision`` are set for Hub members, ``revision``
    always being the full commit sha the member was pinned to; ``path`` is the local checkpoint folder
    (a snapshot in the Hugging Face cache for Hub members).
    """

    source: str
    repo_id: str | None
    revision: str | None
    path: str
    model_type: str
    role: str = "anchor"

    @property
    def display(self) -> str:
        return f"{self.repo_id}@{self.revision[:10]}" if self.repo_id and self.revision else self.source


class ResolvedMembers(list):
    """A list of :class:`ResolvedMember` that also carries the population's ``model_type``."""

    def __init__(self, members: Iterable[ResolvedMember], model_type: str):
        super().__init__(members)
        self.model_type = model_type


@dataclass
class Source:
    source: str
    repo_id: str | None = None
    revision: str | None = None  # as written (branch, tag or sha); None = default branch
    path: str | None = None  # local folder
    # filled while resolving
    sha: str | None = None
    files: list[str] | None = None
    config_path: str | None = None
    config: dict | None = None

    @property
    def label(self) -> str:
        return self.source


# ---------------------------------------------------------------------------------------------- parsing
def parse_source(source: str, base_dir: str | None = None) -> tuple[str | None, str | None, str | None]:
    """``(repo_id, revision, local_path)`` for one source; exactly one of repo_id / local_path is set.

    A source naming an existing folder (relative to ``base_dir`` when given) is local; one that looks like
    a path (``./x``, ``/x``, ``~/x``) but does not exist is an error; anything else is ``org/name[@revision]``.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not isinstance(source, str) or not source.strip():
        raise PopulationError(f"population entries must be non-empty strings, got {source!r}")
    source = source.strip()
    candidates = [os.path.expanduser(source)]
    if base_dir is not None and not os.path.isabs(candidates[0]):
        candidates.insert(0, os.path.join(base_dir, candidates[0]))
    for cand in candidates:
        if os.path.isdir(cand):
            return None, None, os.path.abspath(cand)
    looks_like_path = source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
    repo_id, _, revision = source.partition("@")
    if looks_like_path and "@" not in source:
        raise PopulationError(f"population member {source!r}: no such folder; give an existing checkpoint folder or a Hub id org/name[@revision]")
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        raise PopulationError(
            f"population member {source!r} is neither an existing folder nor a valid Hub id; "
            "write org/name, org/name@revision or a path to a checkpoint folder"
        ) from None
    if "@" in source and not revision:
        raise PopulationError(f"population member {source!r} has an empty revision after '@'; write org/name@<branch, tag or commit sha>")
    return repo_id, revision or None, None


def read_population_file(path: str, role: str = "anchor") -> list[str]:
    """The sources listed in a population file, for ``role``.

    Accepted forms: a YAML list; a YAML mapping with ``anchors:`` and/or ``held_out:`` lists (the key
    for ``role`` is read); or plain text with one source per line (``#`` starts a comment).
    Relative folder paths are taken relative to the file's folder.
    """
    import yaml

    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    if isinstance(data, dict):
        keys = ROLE_KEYS.get(role, (role,))
        found = [k for k in keys if k in data]
        if not found:
            raise PopulationError(
                f"population file {path} has no `{keys[0]}:` list (its keys: {', '.join(map(str, data))}); "
                f"add `{keys[0]}:` with one Hub id or folder per item"
            )
        data = data[found[0]]
        if data is None:
            data = []
    if isinstance(data, list):
        entries = data
    else:  # one source per line
        entries = [line.split("#", 1)[0].strip() for line in text.splitlines()]
        entries = [e for e in entries if e]
    bad = [e for e in entries if not isinstance(e, str)]
    if bad:
        raise PopulationError(f"population file {path}: entries must be strings (org/name[@revision] or a folder), got {bad[0]!r}")
    return [e.strip() for e in entries]


def expand_sources(sources: Sequence[str] | str, role: str) -> list[Source]:
    if isinstance(sources, str):
        sources = [sources]
    out: list[Source] = []
    for src in sources:
        if isinstance(src, os.PathLike):
            src = os.fspath(src)
        if isinstance(src, str) and os.path.isfile(os.path.expanduser(src)):
            pop_file = os.path.abspath(os.path.expanduser(src))
            base = os.path.dirname(pop_file)
            for entry in read_population_file(pop_file, role):
                repo_id, revision, path = parse_source(entry, base)
                out.append(Source(entry, repo_id, revision, path))
        else:
            repo_id, revision, path = parse_source(src)
            out.append(Source(src.strip(), repo_id, revision, path))
    if not out:
        raise PopulationError(f"no {role} models given; pass Hub ids, folders or a population file")
    return out


# ---------------------------------------------------------------------------------------------- helpers
def parallel_map(fn: Callable[[T], R], items: Sequence[T], max_workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on a thread pool; the first failure (in input order) is raised."""
    if len(items) <= 1 or max_workers <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def check_weight_files(label: str, files: Iterable[str]) -> None:
    files = list(files)
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = sorted(os.path.basename(f) for f in files if f.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise PopulationError(
            f"{label} holds only {pickles[0]}; star-merge loads safetensors only. Convert it (load it yourself "
            "if you trust it, then save_pretrained, or use the Hub's safetensors conversion bot) and retry"
        )
    raise PopulationError(f"{label} has no *.safetensors weights; give a transformers checkpoint saved with save_pretrained")


def local_folder_hint(source: str) -> str | None:
    """For an ``org/name`` source whose ``org`` is a local folder (``pop/m9`` beside ``pop/``): the one line saying
    there is no such local folder, what that folder holds, and how to name a Hub id instead; else None."""
    first, _, rest = source.partition("@")[0].partition("/")
    if not rest or not os.path.isdir(first):
        return None
    held = sorted(n for n in os.listdir(first) if os.path.isdir(os.path.join(first, n)))
    shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
    return (f"population member {source!r}: no such local folder ({first}/ holds {shown or 'no folders'}); "
            f"give an existing checkpoint folder (./{source} for a path), or a Hub id org/name that is not a "
            "local folder's name")


def offline_hint(repo_id: str) -> str:
    return (
        f"check the id, run once with network access (unset HF_HUB_OFFLINE), or pre-download it with "
        f"`hf download {repo_id}`"
    )


def cache_root(cache_dir: str | None) -> str:
    from huggingface_hub import constants

    return os.path.abspath(os.path.expanduser(str(cache_dir or constants.HF_HUB_CACHE)))
