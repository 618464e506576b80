"""The backfill's forecast: when it will finish at the measured rate, and whether that meets the deadline.

Pure arithmetic over numbers the caller measured, so that it is tested on a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from pgstage.errors import UsageError


@dataclass(frozen=True)
class Forecast:
    rate: float                 # units per second, all jobs together, as measured
    eta_s: float | None         # seconds until the last unit, at that rate (None before a unit is measured)
    finish: datetime | None
    deadline: datetime | None
    late: bool                  # the projected finish passes the deadline
    jobs_needed: int | None     # the --jobs that would meet the deadline at the same rate per job, when late
    most_jobs: int | None = None    # the most jobs that can be busy at once: one or two per pipeline (None: no limit)

    def warning(self, jobs: int) -> str | None:
        """The sentence a late forecast prints; None when on time or without a deadline."""
        if not self.late or self.finish is None or self.deadline is None:
            return None
        if not self.jobs_needed:
            advice = "the deadline has passed"
        elif self.most_jobs is not None and self.jobs_needed > self.most_jobs:
            # A pipeline's days merge one at a time, in order (the next one at most staging meanwhile:
            # backfill/turns.py): more jobs than that wait.
            advice = (f"more --jobs cannot meet it: each pipeline merges its days one at a time, so at most"
                      f" {self.most_jobs} jobs are busy")
        else:
            advice = f"--jobs {self.jobs_needed} would meet it if the database keeps up"
        return (f"late: at the measured rate the backfill ends at {self.finish:%Y-%m-%d %H:%M}, after the deadline"
                f" {self.deadline:%Y-%m-%d %H:%M} (running with --jobs {jobs}); {advice}")


def forecast(*, measured: int, elapsed_s: float, remaining: int, jobs: int, now: datetime,
             deadline: datetime | None, most_jobs: int | None = None) -> Forecast:
    """Project the finish from `measured` units done in `elapsed_s` seconds, `remaining` to go.

    The --jobs that would meet a missed deadline assumes each job keeps the rate it has now:
    true while the database has idle cores, optimistic beyond. No more than `most_jobs` (one per
    pipeline, two for a pipeline whose next day may validate while one merges) can be busy, whatever --jobs says: the warning says so rather than ask for more.
    """
    if measured <= 0 or elapsed_s <= 0:
        return Forecast(0.0, None, None, deadline, False, None, most_jobs)
    rate = measured / elapsed_s
    eta = remaining / rate
    finish = now + timedelta(seconds=eta)
    late = deadline is not None and finish > deadline
    needed = None
    if late and deadline is not None:
        left = (deadline - now).total_seconds()
        needed = math.ceil(jobs * eta / left) if left > 0 else None
    return Forecast(rate, eta, finish, deadline, late, needed, most_jobs)


def parse_deadline(text: str, now: datetime) -> datetime:
    """`HH:MM` is its next occurrence in now's time zone (tomorrow once it has passed); else an ISO date-time."""
    try:
        clock = time.fromisoformat(text)
    except ValueError:
        clock = None
    if clock is not None and len(text) <= 8:
        at = now.replace(hour=clock.hour, minute=clock.minute, second=clock.second, microsecond=0)
        return at if at > now else at + timedelta(days=1)
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--deadline {text!r} is neither HH:MM nor a date and time",
                         hint="e.g. --deadline 08:00, or --deadline 2025-01-02T08:00") from None
    return at if at.tzinfo else at.replace(tzinfo=now.tzinfo)
