"""Two days of one pipeline in flight, merged in order: the next day stages and validates while the day before merges.

A unit of 5,000 records spends most of its time in statements that run one after the
other on one core: COPY, the validation pass, the merge and its commit. With `--jobs 2` and
one pipeline, the second job would otherwise wait for the first day to finish. So a job may
claim a pipeline's second pending day while another job *of this process* runs the first
(queue.build_claim); that unit's run goes as far as its validated checkpoints, then waits
(`run.Turn.wait`, before the volume check and the merge) until the first day's outcome is
committed. Everything before that point reads only the unit's own file and the spec; from it
on the run reads what earlier days wrote (the volume history, the target), as a one-by-one
run would. So the days still merge one at a time, in order, with the same ledger rows.

Only specs whose validation reads nothing but the record may overlap (`overlaps`): a
reference, a uniqueness rule or a custom check looks at tables that the day before may still
be writing. Only days run by this process overlap, and only once the earlier day's run has
its ledger row (`started`): run ids follow the days, and a job never waits for a unit that
no live job of its own holds. If the job running the earlier day dies (the queue's database
went away), the waiting unit stops too, unmerged (`Stopped`), and a re-run resumes both.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date

from pgstage.spec import Spec

WAKE_S = 0.5    # how often a waiting unit looks whether its process has crashed meanwhile


class Stopped(BaseException):
    """The earlier day's job died: the waiting unit stops unmerged (its claim rolls back, a re-run resumes it).

    A BaseException, like KeyboardInterrupt: it must not become the unit's "failed" outcome.
    """


def overlaps(spec: Spec) -> bool:
    """Whether this spec's next day may stage and validate while its day before merges."""
    return not (spec.references or spec.checks or any(c.references or c.unique for c in spec.columns.values()))


@dataclass
class _Day:
    ended: threading.Event = field(default_factory=threading.Event)
    merged_in_order: bool = False    # its outcome committed (succeeded, skipped or failed): the next day may merge


class Turns:
    """The units this process runs whose runs have started, and when each ends; shared by the jobs."""

    def __init__(self, crashed: threading.Event) -> None:
        self._crashed = crashed
        self._lock = threading.Lock()
        self._days: dict[tuple[int, date], _Day] = {}

    def started(self, spec_no: int, day: date) -> None:
        with self._lock:
            self._days.setdefault((spec_no, day), _Day())

    def running(self) -> list[tuple[int, date]]:
        """(spec number, day) of the runs started here and not ended: what a claim may overlap."""
        with self._lock:
            return [key for key, d in self._days.items() if not d.ended.is_set()]

    def ended(self, spec_no: int, day: date, *, committed: bool) -> None:
        """The unit's outcome is committed (or, `committed=False`, its job died holding it)."""
        with self._lock:
            d = self._days.setdefault((spec_no, day), _Day())
            d.merged_in_order = committed
            d.ended.set()

    def wait_for(self, spec_no: int, day: date) -> None:
        """Return once that unit's outcome is committed; raise Stopped if its job died or this process crashed."""
        with self._lock:
            d = self._days.get((spec_no, day))
        if d is None:   # claimed only while it ran here, so it has ended and been forgotten: never
            raise AssertionError(f"unit {spec_no} {day} was never started here")
        while not d.ended.wait(WAKE_S):
            if self._crashed.is_set():
                raise Stopped(f"the backfill stopped while day {day} was loading")
        if not d.merged_in_order:
            raise Stopped(f"the job loading day {day} stopped")


class UnitTurn:
    """`run.Turn` for one claimed unit: reports its start, and waits for `after` (if any) before merging."""

    def __init__(self, turns: Turns, spec_no: int, day: date, after: date | None) -> None:
        self.turns, self.spec_no, self.day, self.after = turns, spec_no, day, after

    def started(self) -> None:
        self.turns.started(self.spec_no, self.day)

    def wait(self) -> None:
        if self.after is not None:
            self.turns.wait_for(self.spec_no, self.after)
