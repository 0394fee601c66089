"""Fault injection for the crash tests: ``STAR_MERGE_KILL_AT=<point>[:<k>]`` kills the process (SIGKILL,
like ``kill -9`` or a power cut) the k-th time (default 1st) it reaches ``fault_point(<point>)``.

Points: ``population`` (after a member is saved), ``starlight`` (after an optimizer step),
``checkpoint-save`` (Accelerate's state written, Starlight's not yet), ``export`` (BMA weights in its temp
folder, not yet renamed), ``evaluation`` (models scored, report not yet written). Unset, it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get("STAR_MERGE_KILL_AT")
    if not spec:
        return
    point, _, k = spec.partition(":")
    if point != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == int(k or 1):
        os.kill(os.getpid(), signal.SIGKILL)
