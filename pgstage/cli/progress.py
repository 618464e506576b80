"""The progress bar of a run: bytes and records of each file, batches, rate and ETA, on a terminal only.

It listens to the run's events (pgstage/ops/logs.py), so the library never draws anything;
on a pipe or a file (CI, cron, a log collector) there is no bar at all. While the throttle
holds the run, a line says why (`paused: replica lag 42s > 30s`), and the time remaining is
projected from the time the run was working, not waiting: a ten-minute pause must not make
every later ETA ten minutes' worth of rate slower.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pgstage.ops import logs

if TYPE_CHECKING:
    from pgstage.cli._bar import _Bar, _PaintedProgress

# The events that give a bar something to draw; until one comes, nothing is drawn or imported.
_FIRST_DRAWN = frozenset({"file started", "run paused"})


def paused_within(pauses: list[tuple[float, float | None]], start: float, now: float) -> float:
    """Seconds of the pauses (start, end or None while on) that fall between `start` and `now`."""
    return sum(max(0.0, min(now, end if end is not None else now) - max(start, began)) for began, end in pauses)


def remaining_s(completed: float, total: float | None, elapsed: float, paused: float) -> float | None:
    """Time left at the rate of the working time so far; None until there is a rate to project."""
    working = elapsed - paused
    if not total or completed <= 0 or working <= 0:
        return None
    return max(total - completed, 0.0) * working / completed


class _DeferredBar:
    """The run's listener: starts the bar (pgstage/cli/_bar.py) at the first event it can draw.

    Events come from the pool's threads too (a pause), hence the lock around the start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.progress: _PaintedProgress | None = None
        self.bar: _Bar | None = None

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        with self._lock:
            if self.bar is None:
                if event not in _FIRST_DRAWN:
                    return
                from pgstage.cli._bar import start
                self.progress, self.bar = start()
            bar = self.bar
        bar(event, fields)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


@contextmanager
def run_progress() -> Iterator[None]:
    """Show the bar while the block runs, if stderr is a terminal and there is a file to load; else do nothing."""
    if not sys.stderr.isatty():
        yield
        return
    bar = _DeferredBar()
    stop = logs.listen(bar)
    try:
        yield
    finally:
        stop()
        bar.close()
