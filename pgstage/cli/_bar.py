"""The progress bar's rich parts, imported at the first file a run loads (pgstage/cli/progress.py).

A run whose files were all loaded before never draws a bar, so it never imports rich.progress
(issue #18: `pgstage run` of a loaded file pays only for what it uses).
"""

from __future__ import annotations

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


def start() -> tuple[Progress, _Bar]:
    """A started bar on stderr, and the listener that draws the run's events on it."""
    remaining = _WorkingTimeRemaining()
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                        TransferSpeedColumn(), remaining,
                        console=Console(stderr=True), transient=False)
    bar = _Bar(progress)
    remaining.bar = bar
    progress.start()
    return progress, bar
