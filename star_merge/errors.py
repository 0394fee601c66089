"""The one user-error path: expected failures become one line (and exit status 2), never a traceback.

Expected failures are bad arguments or inputs (ValueError and its subclasses: RunError, ConfigError,
DatasetError, NonFiniteError, ...), missing or existing files, a locked run directory, and a full disk.
Anything else is a bug and keeps its traceback. Under ``python -m star_merge.launch`` the line is also
written to ``$STAR_MERGE_ERROR_FILE`` so the launcher can exit 2 without Accelerate's traceback.
"""

from __future__ import annotations

import errno
import os
import sys

__all__ = ["USER_ERRORS", "user_error_line", "report_user_error"]

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, KeyError,
               PermissionError)
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def _first_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    text = text.strip()
    return text.splitlines()[0] if text else type(e).__name__


def user_error_line(e: BaseException) -> str | None:
    """The one line to print for an expected failure ``e``; None when ``e`` is a bug (keep the traceback)."""
    text = str(e)
    if (isinstance(e, OSError) and e.errno in _DISK_FULL) or "No space left on device" in text \
            or "StorageFull" in text:
        where = f" writing {e.filename}" if isinstance(e, OSError) and e.filename else ""
        return (f"no space left on device{where}; free some space and rerun the same command "
                "(a Starlight run: add --resume_from_checkpoint latest)")
    if isinstance(e, USER_ERRORS):
        return _first_line(e)
    for cls in type(e).__mro__:  # the Hub's own user errors (PushError) without importing it here
        if cls.__name__ == "PushError":
            return _first_line(e)
    return None


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
