"""The page model: what a report page shows, built from ledger data by pure functions.

Ledger rows (dicts as `pgstage.pipeline.ledger` returns them) go in; frozen dataclasses come
out, with every number already counted, so the charts and the template only lay them out.
Sections without data (no verdict stored, no reconcile, no backfill) are empty tuples here
and are left out of the page.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pgstage.db import mask

# The §5 identity in the order the funnel reads: read splits into rejected and valid, valid
# into what the merge did with it; `deleted` stands beside them.
FUNNEL = ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale", "deleted")
PHASES = ("stage", "validate", "merge", "paused")
MASKED = "***"
_SECRET_KEY = re.compile(r"password|passwd|secret|token|webhook|api_?key", re.IGNORECASE)


@dataclass(frozen=True)
class BatchSpan:
    """One batch on the timeline: each phase as (start, end) in seconds from the run's first stage."""

    file: str
    batch_no: int
    records: tuple[int, int]
    status: str
    phases: dict[str, tuple[float, float]]

    @property
    def label(self) -> str:
        return f"{self.file.rsplit('/', 1)[-1]} #{self.batch_no}"     # the file's name: short enough for an axis


@dataclass(frozen=True)
class PauseSpan:
    """One throttle pause (pgstage.pauses) on the timeline's clock: the run waited, holding no lock."""

    reason: str
    detail: str
    start: float
    end: float

    @property
    def label(self) -> str:
        return f"paused: {self.reason}"


@dataclass(frozen=True)
class RejectSample:
    file: str
    record: int
    reasons: tuple[str, ...]                 # "column.rule: message"
    raw: tuple[tuple[str, str | None], ...]  # (field, value) in the source's order


@dataclass(frozen=True)
class FileRow:
    path: str
    status: str
    counts: dict[str, int]


@dataclass(frozen=True)
class RunPage:
    run_id: int
    pipeline: str
    partition: str | None
    target: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    host: str | None
    pid: int | None
    attempts: int
    dry_run: bool
    message: str | None
    counts: dict[str, int]                   # FUNNEL keys, zero when the run recorded none
    rejects_by_rule: tuple[tuple[str, int], ...]
    rejected_records: int                    # a record failing two rules counts once here
    samples: tuple[RejectSample, ...]
    files: tuple[FileRow, ...]
    batches: tuple[BatchSpan, ...]           # with recorded timings only
    untimed_batches: int                     # batches from before timings were recorded
    spec: Any                                # the resolved spec, secrets masked; None if not recorded
    spec_path: str | None
    pauses: tuple[PauseSpan, ...] = ()       # on the batches' clock
    anomaly: str | None = None               # the stored volume verdict, as text
    anomaly_band: tuple[float, float] | None = None
    reconcile: Reconciliation | None = None


@dataclass(frozen=True)
class HistoryDay:
    day: date
    runs: int
    status: str                              # the worst status of the day's runs
    counts: dict[str, int]


@dataclass(frozen=True)
class AnomalyDay:
    """A day's stored volume verdict (pgstage.runs.anomaly): the expected band of records read, flagged or not."""

    day: date
    low: float
    high: float
    flagged: bool
    verdict: str = ""                        # "flagged (block): <reason>"
    run_id: int | None = None
    score: float | None = None               # robust z of records read
    training_runs: int = 0


@dataclass(frozen=True)
class Reconciliation:
    """One reconcile result as stored with its run (pgstage.runs.reconcile)."""

    checked_at: datetime                     # the run's end: a standalone check is stored with the latest success
    partition: str | None
    status: str                              # matched | differences | error
    missing: int
    extra: int
    different: int
    run_id: int | None = None
    method: str = ""
    summary: str = ""


def verdict_text(verdict: dict[str, Any]) -> str:
    """`flagged (block): reason`, `ok: reason`, as a person reads a stored verdict."""
    name = str(verdict.get("verdict") or "")
    action = f" ({verdict.get('action')})" if name == "flagged" and verdict.get("action") else ""
    accepted = " (accepted)" if verdict.get("accepted") and name != "accepted" else ""
    return f"{name}{action}{accepted}: {verdict.get('reason') or ''}".rstrip(": ")


def anomaly_day(day: date, run_id: int, verdict: dict[str, Any]) -> AnomalyDay:
    low, high = verdict["expected"]
    score = verdict.get("score")
    return AnomalyDay(day, float(low), float(high), verdict.get("verdict") == "flagged", verdict_text(verdict), run_id,
                      None if score is None else float(score), len(verdict.get("training_runs") or ()))


def reconciliation(run_id: int, partition: str | None, at: datetime, result: dict[str, Any]) -> Reconciliation:
    def count(kind: str) -> int:
        found = result.get(kind)
        return int(found.get("count") or 0) if isinstance(found, dict) else 0

    status = "error" if result.get("error") else "differences" if result.get("differences") else "matched"
    return Reconciliation(at, partition, status, count("missing"), count("extra"), count("different"), run_id,
                          str(result.get("method") or ""), str(result.get("error") or result.get("summary") or ""))


@dataclass(frozen=True)
class BackfillUnit:
    """One (spec, day) unit of a backfill (pgstage.backfill_units), for the calendar."""

    day: date
    status: str                              # pending | running | succeeded | failed | skipped
    run_id: int | None = None
    message: str | None = None               # a failed unit's reason

    @property
    def title(self) -> str:
        """The cell's tooltip: day, status, run and (failed) why."""
        return (f"{self.day}: {self.status}" + (f", run {self.run_id}" if self.run_id is not None else "")
                + (f" — {self.message}" if self.message and self.status == "failed" else ""))


@dataclass(frozen=True)
class CalendarMonth:
    """A month of the backfill calendar: weeks of seven cells, Monday first; None outside the month or the units."""

    label: str                               # "2024-03"
    weeks: tuple[tuple[BackfillUnit | None, ...], ...]


UNIT_STATUSES = ("succeeded", "skipped", "running", "pending", "failed")


def calendar_months(units: tuple[BackfillUnit, ...]) -> tuple[CalendarMonth, ...]:
    """The units laid out as month calendars, from the first unit's month to the last's (days without a unit blank)."""
    if not units:
        return ()
    by_day = {u.day: u for u in units}
    first, last = min(by_day), max(by_day)
    months = []
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        weeks = []
        for week in calendar.Calendar(firstweekday=0).monthdatescalendar(year, month):
            weeks.append(tuple(by_day.get(d) if d.month == month else None for d in week))
        months.append(CalendarMonth(f"{year:04d}-{month:02d}", tuple(weeks)))
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return tuple(months)


def unit_tally(units: tuple[BackfillUnit, ...]) -> dict[str, int]:
    """Units by status, every status present (zero when none), in the legend's order."""
    return {status: sum(1 for u in units if u.status == status) for status in UNIT_STATUSES}


@dataclass(frozen=True)
class BackfillCalendar:
    """One pipeline's units of one backfill."""

    pipeline: str
    units: tuple[BackfillUnit, ...]

    @property
    def months(self) -> tuple[CalendarMonth, ...]:
        return calendar_months(self.units)

    @property
    def tally(self) -> dict[str, int]:
        return unit_tally(self.units)


@dataclass(frozen=True)
class BackfillPage:
    """`pgstage report --backfill ID`: the backfill's range, its units by status, one calendar per pipeline."""

    backfill_id: int
    first_day: date
    last_day: date
    created_at: datetime
    calendars: tuple[BackfillCalendar, ...]
    failures: tuple[tuple[str, BackfillUnit], ...]   # (pipeline, unit), oldest day first
    generated_at: datetime | None = None

    @property
    def tally(self) -> dict[str, int]:
        return unit_tally(tuple(u for c in self.calendars for u in c.units))


@dataclass(frozen=True)
class RunRow:
    run_id: int
    partition: str | None
    status: str
    started_at: datetime
    duration_s: float | None
    counts: dict[str, int]


@dataclass(frozen=True)
class PipelinePage:
    pipeline: str
    days: int
    first_day: date | None
    last_day: date | None
    history: tuple[HistoryDay, ...]
    runs: tuple[RunRow, ...]
    totals: dict[str, int]
    anomalies: tuple[AnomalyDay, ...] = ()
    reconciliations: tuple[Reconciliation, ...] = ()
    backfill: tuple[BackfillUnit, ...] = ()
    generated_at: datetime | None = field(default=None)
    backfill_id: int | None = None           # the backfill whose units `backfill` holds

    @property
    def backfill_months(self) -> tuple[CalendarMonth, ...]:
        return calendar_months(self.backfill)

    @property
    def backfill_tally(self) -> dict[str, int]:
        return unit_tally(self.backfill)


_SEVERITY = {"failed": 5, "rejected_threshold": 4, "blocked": 4, "running": 3, "succeeded": 2, "skipped": 1}


def counts_of(recorded: dict[str, Any] | None) -> dict[str, int]:
    """A ledger `counts` document as the FUNNEL's numbers (a run that recorded none counts zero)."""
    recorded = recorded or {}
    return {key: int(recorded.get(key) or 0) for key in FUNNEL}


def mask_secrets(value: Any, key: str = "") -> Any:
    """Mask every value under a key that names a secret, and every password in a connection URL.

    The ledger stores the spec masked already; the page masks again, so a ledger written by
    another version, or a secret under a key pgstage does not know yet, stays hidden.
    """
    if isinstance(value, dict):
        return {k: mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v, key) for v in value]
    if isinstance(value, str):
        if _SECRET_KEY.search(key):
            return MASKED
        if key in ("url", "dsn", "conninfo") or "://" in value and "@" in value:
            return mask(value)
    return value


def batch_spans(batches: list[dict[str, Any]], pauses: list[dict[str, Any]] | None = None
                ) -> tuple[tuple[BatchSpan, ...], int]:
    """Timed batches on one clock that starts at the run's first recorded phase (or pause), and how many had no timings."""
    timed = [b for b in batches if b.get("timings")]
    origin = _origin(timed, pauses or [])
    spans = tuple(BatchSpan(str(b["file"]), int(b["batch_no"]), (int(b["record_start"]), int(b["record_end"])),
                            str(b["status"]),
                            {phase: (float(span[0]) - origin, float(span[1]) - origin)
                             for phase, span in b["timings"].items() if phase in PHASES and _is_span(span)})
                  for b in sorted(timed, key=lambda b: (min(float(s[0]) for s in b["timings"].values() if _is_span(s)),
                                                        str(b["file"]), int(b["batch_no"]))))
    return spans, len(batches) - len(timed)


def _origin(timed: list[dict[str, Any]], pauses: list[dict[str, Any]]) -> float:
    starts = [float(span[0]) for b in timed for span in b["timings"].values() if _is_span(span)]
    starts += [p["started_at"].timestamp() for p in pauses]
    return min(starts, default=0.0)


def pause_spans(batches: list[dict[str, Any]], pauses: list[dict[str, Any]]) -> tuple[PauseSpan, ...]:
    """The run's pauses (as `throttle.run_pauses` gives them) on the clock of `batch_spans`."""
    origin = _origin([b for b in batches if b.get("timings")], pauses)
    return tuple(PauseSpan(str(p["reason"]), str(p["detail"]), p["started_at"].timestamp() - origin,
                           p["started_at"].timestamp() - origin + float(p["seconds"]))
                 for p in sorted(pauses, key=lambda p: p["started_at"]))


def _is_span(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2


def run_page(run: dict[str, Any], batches: list[dict[str, Any]], samples: list[dict[str, Any]],
             rejected_records: int, pauses: list[dict[str, Any]] | None = None) -> RunPage:
    """A run's page from its ledger row, its batches, some of its rejects (as `rejects.list_rejects` gives
    them) and its throttle pauses."""
    spans, untimed = batch_spans(batches, pauses)
    finished = run.get("finished_at")
    by_rule = run.get("rejects_by_rule") or {}
    return RunPage(
        run_id=int(run["run_id"]), pipeline=str(run["pipeline"]), partition=run.get("partition"),
        target=str(run.get("target") or ""), status=str(run["status"]), started_at=run["started_at"],
        finished_at=finished, duration_s=(finished - run["started_at"]).total_seconds() if finished else None,
        host=run.get("host"), pid=run.get("pid"), attempts=int(run.get("attempts") or 1),
        dry_run=bool(run.get("dry_run")), message=run.get("message"), counts=counts_of(run.get("counts")),
        rejects_by_rule=tuple(sorted(((str(k), int(v)) for k, v in by_rule.items()), key=lambda kv: (-kv[1], kv[0]))),
        rejected_records=rejected_records,
        samples=tuple(RejectSample(str(s["file"]), int(s["record"]),
                                   tuple(f"{r.get('column') or 'record'}.{r.get('rule')}: {r.get('message')}"
                                         for r in s["reasons"]),
                                   tuple((str(k), None if v is None else str(v)) for k, v in s["raw"].items()))
                      for s in samples),
        files=tuple(FileRow(str(f.get("path")), str(f.get("status")), counts_of(f.get("rows")))
                    for f in run.get("files") or []),
        batches=spans, untimed_batches=untimed,
        spec=None if run.get("spec") is None else mask_secrets(run["spec"]), spec_path=run.get("spec_path"),
        pauses=pause_spans(batches, pauses or []),
        anomaly=verdict_text(verdict) if isinstance(verdict := run.get("anomaly"), dict) else None,
        anomaly_band=(float(verdict["expected"][0]), float(verdict["expected"][1]))
        if isinstance(verdict, dict) and verdict.get("expected") else None,
        reconcile=reconciliation(int(run["run_id"]), run.get("partition"), finished or run["started_at"],
                                 run["reconcile"]) if isinstance(run.get("reconcile"), dict) else None)


def pipeline_page(pipeline: str, days: int, runs: list[dict[str, Any]], *,
                  anomalies: tuple[AnomalyDay, ...] = (), reconciliations: tuple[Reconciliation, ...] = (),
                  backfill: tuple[BackfillUnit, ...] = (), generated_at: datetime | None = None,
                  backfill_id: int | None = None) -> PipelinePage:
    """A pipeline's page from its runs (each with a `day`: its partition, else the day it started)."""
    by_day: dict[date, list[dict[str, Any]]] = {}
    for r in runs:
        by_day.setdefault(r["day"], []).append(r)
    history = tuple(
        HistoryDay(day, len(rs), max((str(r["status"]) for r in rs), key=lambda s: _SEVERITY.get(s, 0)),
                   {key: sum(counts_of(r.get("counts"))[key] for r in rs) for key in FUNNEL})
        for day, rs in sorted(by_day.items()))
    rows = tuple(RunRow(int(r["run_id"]), r.get("partition"), str(r["status"]), r["started_at"],
                        (r["finished_at"] - r["started_at"]).total_seconds() if r.get("finished_at") else None,
                        counts_of(r.get("counts")))
                 for r in sorted(runs, key=lambda r: -int(r["run_id"])))
    totals = {key: sum(h.counts[key] for h in history) for key in FUNNEL}
    return PipelinePage(pipeline, days, history[0].day if history else None, history[-1].day if history else None,
                        history, rows, totals, anomalies, reconciliations, backfill, generated_at, backfill_id)
