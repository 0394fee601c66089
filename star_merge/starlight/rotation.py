"""Checkpoint numbering, atomic saves, rotation and resume with fallback, for ``RUN/checkpoints``.

Invariants (see docs/failure_and_recovery.md):

- a checkpoint is written into ``.checkpoint_N.tmp-save`` and renamed to ``checkpoint_N`` only once
  Accelerate's state and Starlight's state are both in it, so every ``checkpoint_N`` is complete;
- ``N`` is one more than the highest number ever used in the folder (torn, corrupt or complete), so a new
  checkpoint never collides with an old one;
- rotation runs after the rename and only removes the oldest *complete* checkpoints beyond the limit, so
  the newest complete checkpoint is never removed;
- a ``checkpoint_N`` without Starlight's state (written by another tool, or a copy interrupted by a full
  disk) is moved aside to ``torn-checkpoint_N`` and reported; one that fails to load is moved aside to
  ``corrupt-checkpoint_N`` and resuming falls back to the previous one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from ..errors import UserError

__all__ = ["STATE_FILE", "CheckpointMismatch", "complete_checkpoints", "find_latest_checkpoint", "set_aside_torn", "save_checkpoint_state", "resume_with_fallback",
           "set_aside"]

logger = logging.getLogger(__name__)

class CheckpointMismatch(UserError):
    """A complete checkpoint this run cannot continue (another number of processes): reported, never set aside."""


STATE_FILE = "starlight_state.json"  # written last: its presence marks a complete checkpoint
_NUMBERED = re.compile(r"^(?:(?:torn|corrupt)-)?checkpoint_(\d+)$")
_PLAIN = re.compile(r"^checkpoint_(\d+)$")
_TMP = ".checkpoint_{n}.tmp-save"


def _numbered(folder: str, pattern=_PLAIN) -> list[tuple[int, str]]:
    if not os.path.isdir(folder):
        return []
    return sorted((int(m.group(1)), os.path.join(folder, d)) for d in os.listdir(folder)
                  if (m := pattern.match(d)) and os.path.isdir(os.path.join(folder, d)))


def complete_checkpoints(folder: str) -> list[tuple[int, str]]:
    """(number, path) of every complete ``checkpoint_N`` in ``folder``, oldest first."""
    return [(n, p) for n, p in _numbered(folder) if os.path.isfile(os.path.join(p, STATE_FILE))]


def find_latest_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete ``checkpoint_N`` folder (one a crash interrupted mid-write is skipped)."""
    found = complete_checkpoints(checkpoint_dir)
    return found[-1][1] if found else None


def set_aside(path: str, prefix: str) -> str:
    """Rename ``.../checkpoint_N`` to ``.../<prefix>-checkpoint_N`` (suffix ``.K`` if taken); returns the new path."""
    parent, name = os.path.split(path)
    target = os.path.join(parent, f"{prefix}-{name}")
    k = 1
    while os.path.exists(target):
        target = os.path.join(parent, f"{prefix}-{name}.{k}")
        k += 1
    os.replace(path, target)
    return target


def set_aside_torn(folder: str) -> list[str]:
    """Move every incomplete ``checkpoint_N`` aside (``torn-checkpoint_N``) and remove interrupted temp
    saves; returns one line per folder moved. Main process only."""
    moved = []
    for _, path in _numbered(folder):
        if not os.path.isfile(os.path.join(path, STATE_FILE)):
            target = set_aside(path, "torn")
            moved.append(f"{path} is incomplete (a crash or a full disk interrupted it); moved to {target}")
    if os.path.isdir(folder):
        for d in os.listdir(folder):
            if d.startswith(".checkpoint_") and ".tmp-" in d:
                shutil.rmtree(os.path.join(folder, d), ignore_errors=True)
    for line in moved:
        logger.warning(line)
    return moved


def _next_number(folder: str) -> int:
    used = [n for n, _ in _numbered(folder, _NUMBERED)]
    return max(used) + 1 if used else 0


def save_checkpoint_state(accelerator, folder: str, total_limit: int | None, write_extra) -> str:
    """Save Accelerate's state (all processes) plus ``write_extra(tmp_folder)`` (main process) as the next
    ``checkpoint_N`` in ``folder``, atomically; then rotate down to ``total_limit`` complete checkpoints."""
    acc = accelerator
    acc.wait_for_everyone()
    n = _next_number(folder)  # every process lists the same folder before anything changes
    final = os.path.join(folder, f"checkpoint_{n}")
    tmp = os.path.join(folder, _TMP.format(n=n))
    acc.wait_for_everyone()
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    acc.wait_for_everyone()
    acc.save_state(tmp, safe_serialization=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        from .._faults import fault_point

        fault_point("checkpoint-save")  # tests: a kill here leaves a torn temp save
        write_extra(tmp)
        os.replace(tmp, final)
        if total_limit is not None:
            complete = complete_checkpoints(folder)
            for _, old in complete[: max(0, len(complete) - total_limit)]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def resume_with_fallback(accelerator, folder: str, requested: str, load, reset) -> str | None:
    """Resume from ``requested`` (a checkpoint path, or ``latest``) by calling ``load(path)``.

    With ``latest``: torn checkpoints are set aside first; a checkpoint whose ``load`` raises is moved
    aside (``corrupt-checkpoint_N``), ``reset()`` is called, and the previous one is tried. Returns the
    loaded path, or None when ``latest`` finds no usable checkpoint (the run was interrupted before its
    first one: training starts from the beginning, which is where that run was).
    """
    acc = accelerator
    if requested == "latest" and acc.is_main_process:
        set_aside_torn(folder)
    acc.wait_for_everyone()
    candidates = [requested] if requested != "latest" else [p for _, p in reversed(complete_checkpoints(folder))]
    for path in candidates:
        try:
            load(path)
            return path
        except CheckpointMismatch:
            raise
        except Exception as e:  # noqa: BLE001  (any unreadable file: fall back to the previous checkpoint)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if requested != "latest":
                raise UserError(f"--resume_from_checkpoint {path} cannot be loaded ({first}); "
                                 "use --resume_from_checkpoint latest or another checkpoint") from None
            acc.wait_for_everyone()
            if acc.is_main_process:
                logger.warning("checkpoint %s cannot be loaded (%s); moved to %s, trying the previous one",
                               path, first, set_aside(path, "corrupt"))
            acc.wait_for_everyone()
            reset()
    if candidates:
        raise UserError(f"--resume_from_checkpoint latest: no checkpoint under {folder} can be loaded (each was "
                         "moved aside as corrupt-checkpoint_N); start again with --overwrite_output_dir")
    logger.warning("--resume_from_checkpoint latest: no usable checkpoint under %s yet; training starts from "
                   "the beginning", folder)
    return None
