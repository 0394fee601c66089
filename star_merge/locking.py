"""An exclusive lock on a run directory, and recovery of the temp folders a crash leaves behind.

The lock is ``RUN/.star-merge.lock``, held with ``flock`` (the kernel drops it when the holder dies, even
by ``kill -9``, so a lock left by a dead process is stale by construction and is simply taken over). The
file records the holder's pid and host for the error message; it is removed on release.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import socket

from .errors import UserError

__all__ = ["LOCK_NAME", "RunLockedError", "lock_output_dir", "lock_run_dir", "recover_atomic_leftovers"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".star-merge.lock"


class RunLockedError(UserError):
    """Another live process holds the run directory."""


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return "another process"
    return text or "another process"


@contextlib.contextmanager
def lock_output_dir(folder: str, role: str = "output_dir", alternative: str = "or choose another --output_dir"):
    """Hold an exclusive lock on ``folder`` (created if missing) for the ``with`` block.

    Raises :class:`RunLockedError` at once if a live process holds it (its one-line message names ``role``
    and ends with ``alternative``). A folder this call created is removed again on exit when nothing but
    the lock was written into it.
    """
    folder = os.path.abspath(folder)
    created = not os.path.exists(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_NAME)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{role} {folder} is in use by {_holder(path)}; wait for that run to end (or stop it) "
                f"{alternative}".rstrip()
            ) from None
        try:  # the holder may have removed the file between our open and flock: lock the file now there
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode())
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty: a bad input leaves no folder behind


@contextlib.contextmanager
def lock_run_dir(run_dir: str):
    """The lock of an existing run directory, for commands that read it and write into it (``star-merge
    evaluate``, ``export-bma``): refused while the run (or another such command) holds it. A folder that
    does not exist is not created: the command's own check reports it."""
    if not os.path.isdir(run_dir):
        yield None
        return
    with lock_output_dir(run_dir, role="run directory", alternative="before evaluating or exporting it") as path:
        yield path


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-[A-Za-z0-9_]+$")
# temp files of io.atomic_file: atomic_write_text (".report.json.k3j_x9a1"), save_permutations
# (".anchor_permutations.safetensors.k3j_x9a1.safetensors"; before: ".perms.XXXX.safetensors")
_TEMP_FILE = re.compile(r"^\.(perms\.[A-Za-z0-9_]+\.safetensors|.+\.(json|md)\.[A-Za-z0-9_]{8}"
                        r"|.+\.safetensors\.[A-Za-z0-9_]{8}\.safetensors)$")


def recover_atomic_leftovers(parent: str) -> list[str]:
    """Clean up after :func:`star_merge.io.atomic_folder` calls a crash interrupted inside ``parent``.

    ``.NAME.tmp-*`` (a folder being written) is removed. ``.NAME.old-*/dir`` (the previous NAME, set aside
    during the swap) is moved back when NAME is missing (the crash hit between the two renames), else
    removed. Temp files of atomic file writes are removed. Call it only while holding the run's lock.
    Returns what was done, one line each.
    """
    done = []
    if not os.path.isdir(parent):
        return done
    for entry in sorted(os.listdir(parent)):
        m = _LEFTOVER.match(entry)
        full = os.path.join(parent, entry)
        if _TEMP_FILE.match(entry) and os.path.isfile(full) and not os.path.islink(full):
            os.remove(full)
            done.append(f"removed {full}")
            continue
        if not m or not os.path.isdir(full):
            continue
        target = os.path.join(parent, m.group("name"))
        kept = os.path.join(full, "dir")
        if m.group("kind") == "old" and os.path.isdir(kept) and not os.path.exists(target):
            os.replace(kept, target)
            done.append(f"restored {target} from {entry}")
        else:
            done.append(f"removed {full}")
        shutil.rmtree(full, ignore_errors=True)
    for line in done:
        logger.warning("crash leftovers: %s", line)
    return done
