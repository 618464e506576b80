"""Fault injection for the crash-safety suite: die with SIGKILL at a named point.

`PGSTAGE_FAULT=point:n` kills the process the n-th time execution reaches `point` (n
counts from 1). Unset, `hit()` is one dictionary lookup. The points sit where a crash is
most dangerous: mid-COPY, between validation and merge, inside and right after the merge
transaction, during index rebuilds.
"""

from __future__ import annotations

import os
import signal

_spec = os.environ.get("PGSTAGE_FAULT", "")
_point, _, _n = _spec.partition(":")
_remaining = int(_n or "1") if _point else 0


def hit(point: str) -> None:
    global _remaining
    if _point != point:
        return
    _remaining -= 1
    if _remaining == 0:
        os.kill(os.getpid(), signal.SIGKILL)
