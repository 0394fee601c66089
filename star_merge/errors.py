"""The one user-error handler: errors a user can act on are printed as one line and exit with status 2.

``cli.py`` and both recipes call :func:`run_reporting_user_errors`. Library code raises :class:`UserError` (or a
subclass) when the input is at fault, with a message that says what to fix. Besides it, only the library errors
that are the user's by nature count (:data:`USER_ERRORS`, and a class that sets ``user_error = True``, as
the self-contained model files do: a missing or existing file or folder, a permission),
and a full disk (``ENOSPC``/``EDQUOT``, also as safetensors' ``StorageFull``). Anything else -- a plain
``ValueError`` or ``KeyError`` included -- is a bug and keeps its traceback. Under ``python -m star_merge.launch`` the line is also written to
``$STAR_MERGE_ERROR_FILE`` so the launcher can exit 2 without Accelerate's traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

__all__ = ["UserError", "QuietUserError", "USER_ERRORS", "flag_hint", "user_error_message", "user_error_line",
           "report_user_error",
           "run_reporting_user_errors"]


class UserError(ValueError):
    """Base of star-merge's own errors about bad input (arguments, files, data)."""


class QuietUserError(UserError):
    """A user error another process of the same run reports (exit 2 here, nothing printed: one line per run)."""

    quiet = True


#: The errors printed as one line: star-merge's own, and the OS errors that name a path the user gave.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def user_error_message(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def user_error_line(e: BaseException) -> str | None:
    """The one line to print for an expected failure ``e``; None when ``e`` is a bug (keep the traceback)."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno in _DISK_FULL) or "No space left on device" in text \
            or "StorageFull" in text:
        where = f" writing {e.filename}" if isinstance(e, OSError) and e.filename else ""
        return (f"no space left on device{where}; free some space and rerun the same command "
                "(a Starlight run: add --resume_from_checkpoint latest)")
    if isinstance(e, USER_ERRORS) or getattr(type(e), "user_error", False) is True:
        return user_error_message(e)
    return None


def flag_hint(message: str, options) -> str:
    """``" (did you mean --num_train_epochs?)"`` for argparse's ``unrecognized arguments: ...`` ``message``: the
    closest of ``options`` (flag strings) to its first unknown flag; ``""`` when none is close."""
    import difflib

    prefix = "unrecognized arguments: "
    if not message.startswith(prefix):
        return ""
    known = [o for o in options if o.startswith("--")]
    for token in message[len(prefix):].split():
        if token.startswith("-"):
            match = difflib.get_close_matches(token.split("=", 1)[0], known, n=1, cutoff=0.6)
            if match:
                return f" (did you mean {match[0]}?)"
    return ""


def report_user_error(line: str, prefix: str = "error: ") -> None:
    """Print ``line`` to stderr; under star_merge.launch also record it for the launcher."""
    print(f"{prefix}{line}", file=sys.stderr, flush=True)
    path = os.environ.get("STAR_MERGE_ERROR_FILE")
    if path:
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass


def run_reporting_user_errors(fn: Callable[[], int | None], prog: str | None = None) -> int:
    """``fn()``'s exit status; a user error is printed as one line ``[PROG: ]error: MESSAGE`` and returns 2."""
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (expected failures: one line; bugs are re-raised with their traceback)
        if getattr(e, "quiet", False):
            return 2
        if lost_peer(e):
            return _report_lost_peer()
        line = user_error_line(e)
        if line is None:
            raise
        report_user_error(line, prefix=f"{prog + ': ' if prog else ''}error: ")
        return 2


LOST_PEER = ("lost contact with another process of this run (it failed or was killed); fix its error, then "
             "rerun with --resume_from_checkpoint latest")


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another process of a multi-process run went away."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return False
    text = str(e)
    return isinstance(e, getattr(dist, "DistError", ())) or any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "ECONNRESET"))


def _report_lost_peer(wait_s: float = 5.0) -> int:
    """Exit status after losing a peer: 2, silently, if another process reported a user error (under
    star_merge.launch, within ``wait_s``); else 1 with :data:`LOST_PEER`."""
    import time

    path = os.environ.get("STAR_MERGE_ERROR_FILE")
    deadline = time.time() + wait_s
    while path and time.time() < deadline:
        if os.path.isfile(path) and os.path.getsize(path) > 0:
            return 2
        time.sleep(0.1)
    print(f"error: {LOST_PEER}", file=sys.stderr, flush=True)
    return 1
