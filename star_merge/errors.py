"""The one user-error handler: errors a user can act on are printed as one line and exit with status 2.

``cli.py`` and both recipes call :func:`run_reporting_user_errors`; library code raises ordinary exceptions
(``ValueError`` subclasses, ``FileNotFoundError``, ``FileExistsError``, ...) whose message says what to fix.
"""

from __future__ import annotations

import sys
from typing import Callable

__all__ = ["UserError", "USER_ERRORS", "user_error_message", "run_reporting_user_errors"]


class UserError(ValueError):
    """Base of star-merge's own errors about bad input (arguments, files, data)."""


USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, KeyError,
               PermissionError)


def user_error_message(e: BaseException) -> str:
    text = str(e).strip()
    if isinstance(e, KeyError) and e.args:
        text = str(e.args[0])
    return text.splitlines()[0] if text else type(e).__name__


def run_reporting_user_errors(fn: Callable[[], int | None], prog: str | None = None) -> int:
    """``fn()``'s exit status; a user error is printed as one line ``[PROG: ]error: MESSAGE`` and returns 2."""
    try:
        return int(fn() or 0)
    except USER_ERRORS as e:
        print(f"{prog + ': ' if prog else ''}error: {user_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
