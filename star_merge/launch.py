"""``python -m star_merge.launch [accelerate launch options] SCRIPT [script args]``: ``accelerate launch``
with the project's error contract.

- A user error in the script (one line on stderr, exit 2) ends the launch with that line and exit 2:
  Accelerate's ``CalledProcessError`` / ``ChildFailedError`` traceback that would follow it is dropped. A flag
  that ``accelerate launch`` itself does not know is one line too, with the closest flag suggested.
- Killing the launcher (SIGINT, SIGTERM, SIGHUP, or even SIGKILL) ends the training processes too: the
  launcher forwards signals to its process group, and every process it starts asks the kernel to be
  sent SIGTERM when its parent dies (``die_with_parent``, which the recipes also call under
  ``accelerate launch``/``torchrun``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

__all__ = ["die_with_parent", "main"]


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent exits. Returns whether it is set."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, int(sig), 0, 0, 0) != 0:  # PR_SET_PDEATHSIG
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() == 1:  # the parent died before prctl: nobody will signal us
        os.kill(os.getpid(), sig)
    return True


def under_launcher() -> bool:
    """Whether this process was started by ``accelerate launch`` or ``torchrun``."""
    # LOCAL_RANK/TORCHELASTIC_RUN_ID: torchrun and multi-process `accelerate launch`; ACCELERATE_USE_CPU and
    # ACCELERATE_DYNAMO_BACKEND: set by `accelerate launch` for one process (not by a user's own environment).
    keys = ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "ACCELERATE_USE_CPU", "ACCELERATE_DYNAMO_BACKEND")
    return any(k in os.environ for k in keys)


def launcher_flag_error(argv) -> str | None:
    """The one-line message for a flag ``accelerate launch`` itself does not know (before the script), or None."""
    from accelerate.commands.launch import launch_command_parser

    from .errors import flag_hint

    parser = launch_command_parser()

    def error(message):
        raise ValueError(f"accelerate launch: {message}{flag_hint(message, parser._option_string_actions)}; "
                         "see accelerate launch --help")

    parser.error = error
    try:
        parser.parse_args(argv)
    except ValueError as e:
        return str(e)
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    bad = launcher_flag_error(argv)
    if bad is not None:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    fd, err_file = tempfile.mkstemp(prefix="star-merge-error-")
    os.close(fd)
    env = dict(os.environ, STAR_MERGE_ERROR_FILE=err_file)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *argv]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=lambda: die_with_parent(signal.SIGTERM))

    def forward(sig, _frame):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    shown: set[str] = set()
    try:
        for raw in proc.stderr:  # the script's stderr (and Accelerate's) pass through this pipe
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("error: ") and line in shown:
                continue  # the same error from another process
            if line.startswith("error: "):
                shown.add(line)
            elif os.path.getsize(err_file) > 0:
                continue  # after a user error: the launcher's traceback and the other ranks' noise
            sys.stderr.buffer.write(raw)
            sys.stderr.flush()
        code = proc.wait()
        with open(err_file) as f:
            errors = [e for e in f.read().splitlines() if e]
    finally:
        os.remove(err_file)
    if errors:
        if f"error: {errors[0]}" not in shown:
            print(f"error: {errors[0]}", file=sys.stderr)
        return 2
    return 130 if code in (-signal.SIGINT, 130) else (code if code >= 0 else 128 - code)


if __name__ == "__main__":
    sys.exit(main())
