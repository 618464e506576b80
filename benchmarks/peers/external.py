"""Running a peer that is a binary (Sling, pgloader) from the child process.

Its output goes to a file, not a pipe: pgloader logs every rejected row, millions of lines
on a bad run. A --timeout arrives as the child's SIGALRM inside subprocess.run, which kills
and reaps the binary, so its peak RSS is still in RUSAGE_CHILDREN.
"""

from __future__ import annotations

import re
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ToolFailed(RuntimeError):
    """The binary exited non-zero; tool_message is the line of its output that says why."""

    def __init__(self, tool_message: str) -> None:
        super().__init__(tool_message)
        self.tool_message = tool_message


def run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, check=False).returncode


def scan(log: Path, wanted: Callable[[str], bool], tail: int = 40) -> tuple[str | None, list[str]]:
    """The first line `wanted` accepts, and the last `tail` lines, without reading the file into memory."""
    first: str | None = None
    last: deque[str] = deque(maxlen=tail)
    with log.open(encoding="utf-8", errors="replace") as lines:
        for raw in lines:
            line = ANSI.sub("", raw).rstrip()
            if first is None and wanted(line):
                first = line
            last.append(line)
    return first, list(last)
