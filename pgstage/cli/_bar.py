"""The progress bar's rich parts, imported at the first file a run loads (pgstage/cli/progress.py).

A run whose files were all loaded before never draws a bar, so it never imports rich.progress
(issue #18: `pgstage run` of a loaded file pays only for what it uses).

The bar is drawn by its own thread (`_Painter`), not by rich's: rich redraws ten times a second
whatever happened, and each redraw lays out the whole table and writes it to the terminal, 1–2 ms
of CPU holding the GIL. During a load the server keeps both cores busy and the main thread feeds
COPY, so that was ~0.2–0.4 s of CPU taken from a 2M-row load (docs/performance.md, "The console
script's own cost, h18r"), for frames that were mostly identical: the bar moves once a batch. The
painter looks at a flag ten times a second and draws when an event changed something, once a
second for the clock columns (time left), and at rich's own pace only while a bar pulses (a pause,
a file of unknown size).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskID, TextColumn, TransferSpeedColumn
from rich.text import Text

from pgstage.cli.progress import paused_within, remaining_s


class _Bar:
    """One task per file (bytes, with its records in the description), one for the batches, one while paused."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.files: dict[str, TaskID] = {}
        self.records: dict[str, int] = {}
        self.batches: TaskID | None = None
        self.pause_line: TaskID | None = None
        self.pauses: list[tuple[float, float | None]] = []   # on the progress clock
        self.changed = False   # an event changed what the bar shows; the painter clears it when it draws

    def paused_since(self, start: float, now: float) -> float:
        return paused_within(list(self.pauses), start, now)

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        name = str(fields.get("file", ""))
        if event == "run paused":
            self.pauses.append((self.progress.get_time(), None))
            why = f"paused: {fields.get('detail', fields.get('reason', ''))}"
            if self.pause_line is None:
                self.pause_line = self.progress.add_task(why, total=None, amount="", start=False)
            else:
                self.progress.update(self.pause_line, description=why, visible=True)
        elif event == "run resumed":
            if self.pauses and self.pauses[-1][1] is None:
                self.pauses[-1] = (self.pauses[-1][0], self.progress.get_time())
            if self.pause_line is not None:
                self.progress.update(self.pause_line, visible=False)
        elif event == "file started":
            self.records[name] = 0
            size = int(fields.get("bytes") or 0)
            self.files[name] = self.progress.add_task(f"{name} · 0 records", total=size or None,
                                                      amount=f"0/{decimal(size)}")
        elif event == "batch staged" and name in self.files:
            self.records[name] += int(fields.get("read", 0))
            done = int(fields.get("byte_end", 0))
            task = self.progress.tasks[self.files[name]]
            self.progress.update(self.files[name], completed=done, description=f"{name} · {self.records[name]:,} records",
                                 amount=f"{decimal(done)}/{decimal(int(task.total or 0))}")
            if self.batches is None:
                self.batches = self.progress.add_task("batches merged", total=0, amount="0/0")
            self._batches(total=1)
        elif event == "batch merged" and self.batches is not None:
            self._batches(done=1)
        else:
            return
        self.changed = True

    def _batches(self, *, total: int = 0, done: int = 0) -> None:
        assert self.batches is not None
        task = self.progress.tasks[self.batches]
        new_total, completed = int(task.total or 0) + total, int(task.completed) + done
        self.progress.update(self.batches, total=new_total, completed=completed, amount=f"{completed}/{new_total}")


class _WorkingTimeRemaining(ProgressColumn):
    """rich's time remaining, from the rate of the task's working time (its paused time left out)."""

    def __init__(self, bar: "_Bar | None" = None) -> None:
        super().__init__()
        self.bar = bar

    def render(self, task: Task) -> Text:
        if task.finished or task.start_time is None or task.elapsed is None:
            return Text("")
        now = task.start_time + task.elapsed
        paused = self.bar.paused_since(task.start_time, now) if self.bar else 0.0
        left = remaining_s(task.completed, task.total, task.elapsed, paused)
        if left is None:
            return Text("-:--:--", style="progress.remaining")
        minutes, secs = divmod(int(left), 60)
        hours, minutes = divmod(minutes, 60)
        return Text(f"{hours}:{minutes:02d}:{secs:02d}", style="progress.remaining")


POLL_S = 0.1    # how often the painter looks for news (rich's own redraw interval, so news shows as soon as before)
CLOCK_S = 1.0   # how often it redraws without news: the time left moves by the second


def redraw_due(changed: bool, pulsing: bool, since_drawn_s: float, clock_s: float = CLOCK_S) -> bool:
    """Whether the painter draws at this look: news, a pulsing bar to animate, or the clock's second is up."""
    return changed or pulsing or since_drawn_s >= clock_s


class _Painter(threading.Thread):
    """Draws the bar when `redraw_due` says so; between draws it only reads a flag and the tasks' totals."""

    def __init__(self, progress: Progress, bar: _Bar, poll_s: float = POLL_S, clock_s: float = CLOCK_S) -> None:
        super().__init__(name="pgstage progress", daemon=True)
        self.progress, self.bar, self.poll_s, self.clock_s = progress, bar, poll_s, clock_s
        self.stopped = threading.Event()
        self.drawn = 0   # frames drawn by this thread (the first and the last are drawn by start and stop)

    def run(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(self.poll_s):
            now = time.monotonic()
            if redraw_due(self.bar.changed, _pulsing(self.progress), now - last, self.clock_s):
                self.bar.changed = False   # before drawing: an event during the draw is drawn at the next look
                self.progress.refresh()
                self.drawn += 1
                last = now

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def _pulsing(progress: Progress) -> bool:
    """A shown bar with no total or not started pulses (rich animates it), so it is drawn at every look."""
    return any(t.visible and (t.total is None or not t.started) for t in progress.tasks)


class _PaintedProgress(Progress):
    """rich's Progress without its refresh thread, drawn by a `_Painter`; stopping it stops the painter first."""

    painter: _Painter | None = None

    def stop(self) -> None:
        if self.painter is not None:
            self.painter.stop()
        super().stop()   # draws the last frame


def start(poll_s: float = POLL_S, clock_s: float = CLOCK_S,
          console: Console | None = None) -> tuple[_PaintedProgress, _Bar]:
    """A started bar on stderr, and the listener that draws the run's events on it."""
    remaining = _WorkingTimeRemaining()
    progress = _PaintedProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                                TransferSpeedColumn(), remaining,
                                console=console or Console(stderr=True), transient=False, auto_refresh=False)
    bar = _Bar(progress)
    remaining.bar = bar
    progress.start()
    progress.painter = _Painter(progress, bar, poll_s, clock_s)
    progress.painter.start()
    return progress, bar
