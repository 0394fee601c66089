"""Fault injection for the crash tests: ``STAR_MERGE_KILL_AT=<point>[:<k>]`` kills the process (SIGKILL,
like ``kill -9`` or a power cut) the k-th time (default 1st) it reaches ``fault_point(<point>)``;
``STAR_MERGE_SIGTERM_AT=<point>[:<k>]`` sends it SIGTERM there instead (a cluster's preemption: the
process goes on until it handles the signal). With ``STAR_MERGE_FAULT_RANK=<r>`` only the process of
rank ``r`` (``$RANK``) does it.

Points: ``population`` (after a member is saved), ``starlight`` (after an optimizer step),
``checkpoint-save`` (Accelerate's state written, Starlight's not yet), ``export`` (BMA weights in its temp
folder, not yet renamed), ``evaluation`` (models scored, report not yet written). Unset, it costs two environment lookups.
"""

from __future__ import annotations

import os
import signal

_counts: dict[tuple[str, str], int] = {}
_ACTIONS = (("STAR_MERGE_KILL_AT", signal.SIGKILL), ("STAR_MERGE_SIGTERM_AT", signal.SIGTERM))


def fault_point(name: str) -> None:
    for var, sig in _ACTIONS:
        spec = os.environ.get(var)
        if not spec:
            continue
        point, _, k = spec.partition(":")
        rank = os.environ.get("STAR_MERGE_FAULT_RANK")
        if point != name or (rank is not None and os.environ.get("RANK", "0") != rank):
            continue
        _counts[(var, name)] = _counts.get((var, name), 0) + 1
        if _counts[(var, name)] == int(k or 1):
            os.kill(os.getpid(), sig)
