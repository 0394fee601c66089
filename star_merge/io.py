"""Atomic writes: a file or a folder appears complete under its name, or not at all (temp + rename)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

__all__ = ["atomic_file", "atomic_folder", "atomic_write_json", "atomic_write_text"]


@contextlib.contextmanager
def atomic_file(path: str, suffix: str = ""):
    """Yield a temp file path in ``path``'s folder; on success it is renamed over ``path``, on an error removed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to a temp file in the same folder, then rename it over ``path``."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        f.write(text)


@contextlib.contextmanager
def atomic_folder(output_dir: str):
    """Yield a temp folder beside ``output_dir``; on success it replaces ``output_dir`` by rename.

    An existing ``output_dir`` is set aside first and deleted only once the new folder is in place (it is
    put back if the swap fails); on an exception the temp folder is removed and ``output_dir`` is untouched.
    Callers decide beforehand whether replacing an existing folder is allowed.
    """
    output_dir = os.path.abspath(output_dir)
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        yield tmp
        if not os.path.exists(output_dir):
            os.replace(tmp, output_dir)
            return
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.old-", dir=parent)
        os.replace(output_dir, os.path.join(old, "dir"))
        try:
            os.replace(tmp, output_dir)
        except BaseException:
            os.replace(os.path.join(old, "dir"), output_dir)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
