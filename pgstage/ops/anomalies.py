"""Volume anomalies: is this run's size plausible next to the pipeline's history? (SPEC §9)

Judged after validation, before the merge, on two measures: records read, and the reject
ratio. The baseline is the pipeline's earlier successful runs (the latest one per partition;
runs flagged and not accepted are left out), on the same weekday as the run's day (its
partition, else the day it started): most business feeds are lighter at weekends, and a
monitor that compares Saturday with Tuesday cries wolf every week.

The score is robust: median and MAD (scaled by 1.4826 to read like a standard deviation), so
one odd day in the history does not widen the band for the next month. A run is flagged
only when its distance from the median exceeds all of: `relative` x median, `absolute`
records, and `score` robust deviations. Zero records where the history is not zero is
always flagged. Until the pipeline has `min_runs` earlier runs, and the weekday
`min_same_weekday` of them, the verdict is `learning`, which says why.

The history is a few dozen numbers from the ledger, so the statistics are plain Python.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import connect, execute, resolve_url
from pgstage.errors import UsageError
from pgstage.pipeline import ledger
from pgstage.spec import AnomalySection

MAD_SCALE = 1.4826          # MAD of a normal distribution times this is its standard deviation
REJECT_RATIO_FLOOR = 0.01   # a reject ratio must rise by at least a percentage point to be flagged
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class Verdict:
    """What `pgstage show` and `pgstage anomalies` print, and what the ledger keeps in runs.anomaly."""

    verdict: str                         # ok | flagged | learning | accepted
    reason: str
    weekday: str
    read: int
    reject_ratio: float
    expected: tuple[float, float] | None = None          # band of records read
    median: float | None = None
    mad: float | None = None
    score: float | None = None                           # robust z of records read
    expected_reject_ratio: float | None = None           # upper bound
    training_runs: tuple[int, ...] = ()
    action: str = "warn"
    accepted: bool = False
    flags: tuple[str, ...] = field(default=())           # which measures are out: read, reject_ratio

    @property
    def flagged(self) -> bool:
        return self.verdict == "flagged"

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Past:
    run_id: int
    day: date
    read: int
    rejected: int


def build_history() -> sql.Composed:
    """The pipeline's earlier successful runs, the latest per partition, flagged ones only if accepted (pure)."""
    return sql.SQL(
        "SELECT run_id, day, read, rejected FROM ("
        " SELECT DISTINCT ON (coalesce(partition, run_id::text)) run_id,"
        "  coalesce(CASE WHEN partition ~ '^[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}$' THEN partition::date END,"
        "           (started_at AT TIME ZONE 'UTC')::date) AS day,"
        "  (counts->>'read')::bigint AS read, (counts->>'rejected')::bigint AS rejected"
        " FROM pgstage.runs WHERE pipeline = %(pipeline)s AND run_id < %(run)s AND NOT dry_run"
        "  AND counts IS NOT NULL"
        "  AND (status = 'succeeded' OR (anomaly->>'accepted')::boolean)"
        "  AND (coalesce(anomaly->>'verdict', '') <> 'flagged' OR (anomaly->>'accepted')::boolean)"
        " ORDER BY coalesce(partition, run_id::text), run_id DESC) h"
        " ORDER BY day DESC, run_id DESC LIMIT %(most)s").format()


def build_accepted_before() -> sql.Composed:
    """Was an earlier run of this (pipeline, partition) accepted? Its rerun then passes (pure)."""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pgstage.runs WHERE pipeline = %s AND partition = %s AND run_id < %s"
                   " AND (anomaly->>'accepted')::boolean)").format()


def history(conn: psycopg.Connection[Any], pipeline: str, run_id: int, most: int = 400) -> list[Past]:
    rows = execute(conn, build_history(), {"pipeline": pipeline, "run": run_id, "most": most},
                   label="anomalies: history").fetchall()
    return [Past(int(r), d, int(n or 0), int(j or 0)) for r, d, n, j in rows]


def run_day(partition: str | None, started: datetime | None = None) -> date:
    if partition:
        try:
            return date.fromisoformat(partition)
        except ValueError:
            pass
    return (started or datetime.now()).date()


def judge(past: list[Past], day: date, read: int, rejected: int, settings: AnomalySection) -> Verdict:
    """The verdict on one run's volume given its pipeline's history (pure)."""
    weekday = WEEKDAYS[day.weekday()]
    ratio = rejected / read if read else 0.0
    same = [p for p in past if p.day.weekday() == day.weekday()][:max(settings.min_same_weekday, 8)]
    base = dict(weekday=weekday, read=read, reject_ratio=round(ratio, 6), action=settings.action,
                training_runs=tuple(p.run_id for p in same))
    if read == 0 and any(p.read for p in past):
        return Verdict("flagged", f"zero records where earlier runs had {statistics.median(p.read for p in past):,.0f}"
                       " (median)", flags=("read",), **base)  # type: ignore[arg-type]
    if len(past) < settings.min_runs:
        return Verdict("learning", f"{len(past)} earlier successful run(s); a verdict needs {settings.min_runs}",
                       **base)  # type: ignore[arg-type]
    if len(same) < settings.min_same_weekday:
        return Verdict("learning", f"{len(same)} earlier run(s) on a {weekday}; a verdict needs"
                       f" {settings.min_same_weekday} (days are compared with the same weekday only)",
                       **base)  # type: ignore[arg-type]
    values = [p.read for p in same]
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values) * MAD_SCALE
    allowed = max(settings.relative * median, float(settings.absolute), settings.score * mad)
    score = (read - median) / mad if mad else (0.0 if read == median else float("inf") if read > median else float("-inf"))
    flags = ["read"] if abs(read - median) > allowed else []
    ratios = [p.rejected / p.read if p.read else 0.0 for p in same]
    ratio_median = statistics.median(ratios)
    ratio_mad = statistics.median(abs(r - ratio_median) for r in ratios) * MAD_SCALE
    ratio_high = ratio_median + max(settings.relative * ratio_median, settings.score * ratio_mad, REJECT_RATIO_FLOOR)
    if ratio > ratio_high and rejected - ratio_median * read > settings.absolute:
        flags.append("reject_ratio")
    expected = (round(max(0.0, median - allowed), 1), round(median + allowed, 1))
    if flags:
        what = []
        if "read" in flags:
            what.append(f"{read:,} records read, expected {expected[0]:,.0f}-{expected[1]:,.0f} on a {weekday}")
        if "reject_ratio" in flags:
            what.append(f"reject ratio {ratio:.1%}, expected at most {ratio_high:.1%}")
        reason = "; ".join(what)
    else:
        reason = f"{read:,} records read, within {expected[0]:,.0f}-{expected[1]:,.0f} on a {weekday}"
    return Verdict("flagged" if flags else "ok", reason, expected=expected, median=median, mad=round(mad, 3),
                   score=None if score in (float("inf"), float("-inf")) else round(score, 3),
                   expected_reject_ratio=round(ratio_high, 6), flags=tuple(flags), **base)  # type: ignore[arg-type]


def assess(conn: psycopg.Connection[Any], pipeline: str, partition: str | None, run_id: int, read: int, rejected: int,
           settings: AnomalySection) -> Verdict:
    """Judge a run against the ledger and store the verdict with it (runs.anomaly)."""
    verdict = judge(history(conn, pipeline, run_id), run_day(partition), read, rejected, settings)
    if verdict.flagged and partition is not None:
        row = execute(conn, build_accepted_before(), (pipeline, partition, run_id), label="anomalies: accepted?").fetchone()
        if row and row[0]:
            verdict = Verdict("accepted", "an earlier run of this partition was accepted into the baseline: "
                              + verdict.reason, **{k: v for k, v in asdict(verdict).items()
                                                   if k not in ("verdict", "reason")})
    store(conn, run_id, verdict)
    return verdict


def store(conn: psycopg.Connection[Any], run_id: int, verdict: Verdict) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.runs SET anomaly = %s WHERE run_id = %s"),
            (json.dumps(verdict.as_dict()), run_id), label="anomalies: store")


# --- `pgstage anomalies` ------------------------------------------------------------------------------


def list_verdicts(*, db: str | None = None, pipeline: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Past runs with their verdicts, newest first."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        cursor = execute(conn, sql.SQL(
            "SELECT run_id, pipeline, partition, status, started_at, anomaly FROM pgstage.runs"
            " WHERE anomaly IS NOT NULL AND (%(pipeline)s::text IS NULL OR pipeline = %(pipeline)s)"
            " ORDER BY run_id DESC LIMIT %(limit)s"), {"pipeline": pipeline, "limit": limit}, label="anomalies: list")
        return [{d.name: v for d, v in zip(cursor.description or [], row)} for row in cursor.fetchall()]


def accept(run_id: int, *, db: str | None = None) -> dict[str, Any]:
    """Mark a run's volume as genuine: it joins the baseline, and a rerun of its partition passes."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        row = execute(conn, sql.SQL(
            "UPDATE pgstage.runs SET anomaly = anomaly || '{\"accepted\": true}' WHERE run_id = %s AND anomaly IS NOT NULL"
            " RETURNING run_id, pipeline, partition, status, started_at, anomaly"), (run_id,),
            label="anomalies: accept").fetchone()
        if row is None:
            raise UsageError(f"run {run_id} has no volume verdict to accept",
                             hint="`pgstage anomalies` lists the runs that have one")
        return dict(zip(("run_id", "pipeline", "partition", "status", "started_at", "anomaly"), row))
