"""What ``push`` may upload: the run's own regular files, with local absolute paths removed.

- Only files a run writes are published (an allow-list per folder); symlinks and stray files are left
  out with a warning, so nothing outside the run (a linked system file, a private note) is uploaded.
- JSON files (report.json, training_info.json, config.json) and model cards are rewritten in staging:
  an absolute path inside the run becomes relative to it, any other absolute path becomes its last
  component, and ``_name_or_path`` is cleared. RUN_DIR itself is never modified.
"""

from __future__ import annotations

import json
import logging
import os
import re

from ..bma.export import BMA_CODE_FILES
from ..processing import is_processor_file
from ..rundir import MERGE_FILE, path_in_run

__all__ = ["STAR_FILES", "is_publishable", "publish_size", "sanitize_json_text", "sanitize_text"]

logger = logging.getLogger(__name__)

#: Files a run writes into star/ (and bma/, which adds its code files) besides its weights and processor files
#: (:func:`star_merge.processing.is_processor_file`); anything else is not published.
STAR_FILES = ("config.json", "generation_config.json", "training_info.json", "model.safetensors.index.json", MERGE_FILE)
_WEIGHTS = re.compile(r"^model(-\d+-of-\d+)?\.safetensors$")


def is_publishable(path: str, rel: str, bma: bool) -> bool:
    """Whether ``path`` (``rel`` inside star/ or bma/) is one of the run's own regular files."""
    if os.path.islink(path) or not os.path.isfile(path):
        logger.warning("not publishing %s: not a regular file (symlinks are never uploaded)", path)
        return False
    if rel in STAR_FILES or ("/" not in rel and is_processor_file(rel)) or _WEIGHTS.match(rel) or (bma and rel in BMA_CODE_FILES):
        return True
    logger.warning("not publishing %s: not a file star-merge writes there", path)
    return False


def _clean(value, run_dir: str):
    if isinstance(value, dict):
        return {k: ("" if k == "_name_or_path" and isinstance(v, str) and os.path.isabs(v) else _clean(v, run_dir))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, run_dir) for v in value]
    if isinstance(value, str) and os.path.isabs(value) and "\n" not in value:
        inside = path_in_run(value, run_dir)
        if inside is not None:
            return inside
        return os.path.basename(value.rstrip(os.sep)) or "."
    return value


def sanitize_json_text(text: str, run_dir: str) -> str:
    """A JSON document with local absolute paths removed (see the module docstring); unchanged text when
    it holds none."""
    obj = json.loads(text)
    clean = _clean(obj, os.path.abspath(run_dir))
    return text if clean == obj else json.dumps(clean, indent=2) + "\n"


def publish_size(path: str, run_dir: str) -> int:
    """Bytes that will be uploaded for ``path`` (a JSON file is uploaded sanitized)."""
    if path.endswith(".json"):
        with open(path, encoding="utf-8") as f:
            return len(sanitize_json_text(f.read(), run_dir).encode("utf-8"))
    return os.path.getsize(path)


def absolute_paths_in(value, out: set) -> None:
    """Add to ``out`` every absolute path held as a string anywhere in the JSON value ``value``."""
    if isinstance(value, dict):
        for v in value.values():
            absolute_paths_in(v, out)
    elif isinstance(value, list):
        for v in value:
            absolute_paths_in(v, out)
    elif isinstance(value, str) and os.path.isabs(value) and "\n" not in value and len(value) > 1:
        out.add(value)


def sanitize_text(text: str, run_dir: str, json_sources=()) -> str:
    """Markdown (a model card) with the run's path and every absolute path found in ``json_sources``
    (JSON files of the run) replaced like :func:`sanitize_json_text` does."""
    run_dir = os.path.abspath(run_dir)
    paths = {run_dir}
    for src in json_sources:
        try:
            with open(src) as f:
                absolute_paths_in(json.load(f), paths)
        except (OSError, ValueError):
            continue
    for p in sorted(paths, key=len, reverse=True):
        text = text.replace(p, _clean(p, run_dir))
    return text
