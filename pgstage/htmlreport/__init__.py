"""`pgstage report --html`: a run's or a pipeline's page, one self-contained HTML file.

The flow is ledger → page model (`model.py`, pure) → HTML (`page.py` with `charts.py`, pure);
only this module reads the database and writes the file.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import connect, execute, resolve_url
from pgstage.errors import UsageError
from pgstage.htmlreport.model import (AnomalyDay, BackfillCalendar, BackfillPage, BackfillUnit, PipelinePage,
                                      Reconciliation, RunPage, anomaly_day, pipeline_page, reconciliation, run_page)
from pgstage.htmlreport.page import render_backfill, render_pipeline, render_run
from pgstage.pipeline import ledger
from pgstage.rejects import list_rejects
from pgstage.throttle import run_pauses

SAMPLE_REJECTS = 20

# A run's day: its partition when that is a date, else the day it started (UTC). The window is
# the last N days of the pipeline's own history, so a backfill of 2022 can be looked at today.
HISTORY = sql.SQL("""
WITH runs AS (
  SELECT run_id, partition, status, started_at, finished_at, counts,
         CASE WHEN partition ~ '^\\d{4}-\\d{2}-\\d{2}$' THEN partition::date
              ELSE (started_at AT TIME ZONE 'UTC')::date END AS day
  FROM pgstage.runs WHERE pipeline = %(pipeline)s AND NOT dry_run)
SELECT run_id, partition, status, started_at, finished_at, counts, day FROM runs
WHERE day > (SELECT max(day) FROM runs) - %(days)s::int
ORDER BY day, run_id""")


def build_run_page(conn: psycopg.Connection[Any], run_id: int, *, db: str | None = None,
                   samples: int = SAMPLE_REJECTS) -> RunPage:
    run = ledger.get_run(conn, run_id)
    if run is None:
        raise UsageError(f"there is no run {run_id} in this database", hint="`pgstage runs` lists the runs")
    rejected = execute(conn, sql.SQL("SELECT count(*) FROM pgstage.rejects WHERE run_id = %s"), (run_id,),
                       label="report: rejected records").fetchone()
    rows = [r.as_dict() for r in list_rejects(run_id, db=db, limit=samples)]
    return run_page(run, ledger.run_batches(conn, run_id), rows, int(rejected[0]) if rejected else 0,
                    run_pauses(conn, run_id))


def build_pipeline_page(conn: psycopg.Connection[Any], pipeline: str, days: int) -> PipelinePage:
    if days < 1:
        raise UsageError(f"--days must be 1 or more, got {days}")
    cursor = execute(conn, HISTORY, {"pipeline": pipeline, "days": days}, label="report: history")
    runs = [{d.name: v for d, v in zip(cursor.description or [], row)} for row in cursor.fetchall()]
    if not runs:
        known = execute(conn, sql.SQL("SELECT DISTINCT pipeline FROM pgstage.runs ORDER BY 1 LIMIT 20"),
                        label="report: pipelines").fetchall()
        names = ", ".join(r[0] for r in known)
        raise UsageError(f"there is no run of pipeline {pipeline!r} in this database",
                         hint=f"pipelines with runs: {names}" if names else "`pgstage run SPEC` records runs")
    first = min(r["day"] for r in runs)
    backfill_id = latest_backfill(conn, pipeline)
    return pipeline_page(pipeline, days, runs, anomalies=anomaly_days(conn, pipeline, first),
                         reconciliations=reconciliations(conn, pipeline, first),
                         backfill=backfill_units(conn, pipeline, backfill_id) if backfill_id is not None else (),
                         generated_at=datetime.now(timezone.utc), backfill_id=backfill_id)


# A run's day as HISTORY reads it, for the sections that read other columns of the same runs.
_DAY = sql.SQL("CASE WHEN partition ~ '^\\d{4}-\\d{2}-\\d{2}$' THEN partition::date"
               " ELSE (started_at AT TIME ZONE 'UTC')::date END")

ANOMALIES = sql.SQL(
    "SELECT DISTINCT ON (day) day, run_id, anomaly FROM (SELECT {day} AS day, run_id, anomaly FROM pgstage.runs"
    " WHERE pipeline = %(pipeline)s AND NOT dry_run AND anomaly IS NOT NULL) r WHERE day >= %(since)s"
    " ORDER BY day, run_id DESC").format(day=_DAY)

RECONCILIATIONS = sql.SQL(
    "SELECT run_id, partition, coalesce(finished_at, started_at), reconcile FROM pgstage.runs"
    " WHERE pipeline = %(pipeline)s AND reconcile IS NOT NULL AND {day} >= %(since)s ORDER BY run_id").format(day=_DAY)


def anomaly_days(conn: psycopg.Connection[Any], pipeline: str, since: date) -> tuple[AnomalyDay, ...]:
    """Each day's stored volume verdict (its latest run's) with its expected band; days still learning have none."""
    rows = execute(conn, ANOMALIES, {"pipeline": pipeline, "since": since}, label="report: anomalies").fetchall()
    return tuple(anomaly_day(day, int(run_id), verdict) for day, run_id, verdict in rows
                 if isinstance(verdict, dict) and verdict.get("expected"))


def reconciliations(conn: psycopg.Connection[Any], pipeline: str, since: date) -> tuple[Reconciliation, ...]:
    """The reconcile results stored with the pipeline's runs (after_run, or the latest by `pgstage reconcile`)."""
    rows = execute(conn, RECONCILIATIONS, {"pipeline": pipeline, "since": since},
                   label="report: reconciliations").fetchall()
    return tuple(reconciliation(int(run_id), partition, at, result) for run_id, partition, at, result in rows
                 if isinstance(result, dict))


# A pending unit whose (pipeline, day) has a run going is being worked on: the queue only knows
# pending until the claim commits, the runs ledger knows the run started.
UNITS = sql.SQL("""
SELECT u.pipeline, u.day,
       CASE WHEN u.status = 'pending' AND EXISTS (
              SELECT 1 FROM pgstage.runs r
              WHERE r.pipeline = u.pipeline AND r.partition = u.day::text AND r.status = 'running')
            THEN 'running' ELSE u.status END,
       u.run_id, u.message
FROM pgstage.backfill_units u
WHERE u.backfill_id = %(backfill_id)s AND (%(pipeline)s::text IS NULL OR u.pipeline = %(pipeline)s)
ORDER BY u.spec_no, u.day""")


def _has_backfills(conn: psycopg.Connection[Any]) -> bool:
    """A ledger where no backfill ever ran has no queue tables; a report only reads, so it does not create them."""
    row = execute(conn, sql.SQL("SELECT to_regclass('pgstage.backfill_units') IS NOT NULL"),
                  label="report: backfill tables?").fetchone()
    return bool(row and row[0])


def latest_backfill(conn: psycopg.Connection[Any], pipeline: str) -> int | None:
    """The newest backfill with a unit of this pipeline, if any."""
    if not _has_backfills(conn):
        return None
    row = execute(conn, sql.SQL("SELECT max(backfill_id) FROM pgstage.backfill_units WHERE pipeline = %s"),
                  (pipeline,), label="report: latest backfill").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _units(conn: psycopg.Connection[Any], backfill_id: int, pipeline: str | None) -> list[tuple[str, BackfillUnit]]:
    rows = execute(conn, UNITS, {"backfill_id": backfill_id, "pipeline": pipeline},
                   label="report: backfill units").fetchall()
    return [(name, BackfillUnit(day, status, run_id, message)) for name, day, status, run_id, message in rows]


def backfill_units(conn: psycopg.Connection[Any], pipeline: str, backfill_id: int) -> tuple[BackfillUnit, ...]:
    """The pipeline's units of one backfill, every day of its range (not only the page's --days window)."""
    return tuple(unit for _, unit in _units(conn, backfill_id, pipeline))


def build_backfill_page(conn: psycopg.Connection[Any], backfill_id: int) -> BackfillPage:
    row = None
    if _has_backfills(conn):
        row = execute(conn, sql.SQL("SELECT first_day, last_day, created_at FROM pgstage.backfills"
                                    " WHERE backfill_id = %s"), (backfill_id,), label="report: backfill").fetchone()
    if row is None:
        raise UsageError(f"there is no backfill {backfill_id} in this database",
                         hint="`pgstage backfill ... --json` prints a backfill's id; check --db")
    by_pipeline: dict[str, list[BackfillUnit]] = {}
    for name, unit in _units(conn, backfill_id, None):
        by_pipeline.setdefault(name, []).append(unit)
    failures = sorted(((name, u) for name, units in by_pipeline.items() for u in units if u.status == "failed"),
                      key=lambda nu: (nu[1].day, nu[0]))
    return BackfillPage(backfill_id, row[0], row[1], row[2],
                        tuple(BackfillCalendar(name, tuple(units)) for name, units in by_pipeline.items()),
                        tuple(failures), datetime.now(timezone.utc))


def write_run_report(run_id: int, path: Path, *, db: str | None = None) -> Path:
    """Write run `run_id`'s page to `path`; return the path written."""
    url = resolve_url(db)
    with connect(url) as conn:
        ledger.ensure(conn)
        page = build_run_page(conn, run_id, db=url)
    return _write(path, render_run(page, datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")))


def write_pipeline_report(pipeline: str, path: Path, *, days: int = 30, db: str | None = None) -> Path:
    """Write the page of `pipeline`'s last `days` days to `path`; return the path written."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        page = build_pipeline_page(conn, pipeline, days)
    return _write(path, render_pipeline(page))


def write_backfill_report(backfill_id: int, path: Path, *, db: str | None = None) -> Path:
    """Write backfill `backfill_id`'s page (its units as calendars by status) to `path`; return the path written."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        page = build_backfill_page(conn, backfill_id)
    return _write(path, render_backfill(page))


def _write(path: Path, html: str) -> Path:
    if path.parent and not path.parent.is_dir():
        raise UsageError(f"cannot write {path}: the directory {path.parent} does not exist")
    try:
        path.write_text(html, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return path


def write_demo_reports(workdir: Path, run_ids: list[int], pipelines: list[str], *,
                       db: str | None = None) -> Path | None:
    """The demo's pages: `report.html` for its last run that loaded rows, `report-<pipeline>.html` for each pipeline."""
    if run_ids:
        write_run_report(run_ids[-1], workdir / "report.html", db=db)
    for name in dict.fromkeys(pipelines):
        write_pipeline_report(name, workdir / f"report-{name}.html", days=366, db=db)
    page = workdir / "report.html"     # a demo that only skipped keeps the page of the one before
    return page if page.exists() else None
