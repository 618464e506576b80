"""The progress bar of a run: bytes and records of each file, batches, rate and ETA, on a terminal only.

It listens to the run's events (pgstage/ops/logs.py), so the library never draws anything;
on a pipe or a file (CI, cron, a log collector) there is no bar at all.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.filesize import decimal
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from pgstage.ops import logs


class _Bar:
    """One task per file (bytes, with its records in the description) and one for the batches."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.files: dict[str, TaskID] = {}
        self.records: dict[str, int] = {}
        self.batches: TaskID | None = None

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        name = str(fields.get("file", ""))
        if event == "file started":
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


@contextmanager
def run_progress() -> Iterator[None]:
    """Show the bar while the block runs, if stderr is a terminal; else do nothing."""
    if not sys.stderr.isatty():
        yield
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[amount]}"),
                        TransferSpeedColumn(), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=False)
    with progress:
        stop = logs.listen(_Bar(progress))
        try:
            yield
        finally:
            stop()
