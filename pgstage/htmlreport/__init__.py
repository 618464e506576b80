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
from pgstage.htmlreport.model import (AnomalyDay, BackfillUnit, PipelinePage, Reconciliation, RunPage, anomaly_day,
                                      pipeline_page, reconciliation, run_page)
from pgstage.htmlreport.page import render_pipeline, render_run
from pgstage.pipeline import ledger
from pgstage.rejects import list_rejects

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
    return run_page(run, ledger.run_batches(conn, run_id), rows, int(rejected[0]) if rejected else 0)


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
    return pipeline_page(pipeline, days, runs, anomalies=anomaly_days(conn, pipeline, first),
                         reconciliations=reconciliations(conn, pipeline, first),
                         backfill=backfill_units(conn, pipeline, first), generated_at=datetime.now(timezone.utc))


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


def backfill_units(conn: psycopg.Connection[Any], pipeline: str, since: date) -> tuple[BackfillUnit, ...]:
    """#18 (`pgstage backfill`): the units of the pipeline's latest backfill. Not recorded yet."""
    return ()


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
