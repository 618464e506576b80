"""One peer step in a fresh process: `python -m benchmarks.peers._child '<job json>'`.

Like `benchmarks._child`: a process per step gives each its own peak RSS, and the clock
starts after the loader's imports. Unlike it, a failing load is a finding, not a broken
benchmark: the error's first line is reported and the exit code stays 0. Peak RSS is the
larger of this process's and its waited-for children's (Sling and pgloader are binaries).
"""

from __future__ import annotations

import importlib
import json
import resource
import signal
import sys
import time
from types import FrameType
from typing import Any


class StepTimeout(Exception):
    """The step ran past --timeout."""


def first_line(exc: BaseException) -> str:
    """The innermost cause's first non-empty line: tools wrap the useful message several times."""
    while exc.__cause__ is not None or (exc.__context__ is not None and not exc.__suppress_context__):
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise StepTimeout("timed out")


def main(argv: list[str]) -> None:
    job: dict[str, Any] = json.loads(argv[1])
    loader = importlib.import_module(f"benchmarks.peers.{job['loader']}")
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(int(job["timeout"]))
    started = time.perf_counter()
    try:
        result: dict[str, Any] = {"ok": True, **loader.load(job)}
    except StepTimeout:
        result = {"ok": False, "timed_out": True, "error": f"timed out after {job['timeout']} s"}
    except Exception as exc:  # any failure of the tool is what we report
        result = {"ok": False, "error": getattr(exc, "tool_message", None) or first_line(exc),
                  "timed_out": bool(getattr(exc, "timed_out", False))}
    result["seconds"] = time.perf_counter() - started
    signal.alarm(0)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result.update(maxrss_kb=max(own, children), maxrss_self_kb=own, maxrss_children_kb=children)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
