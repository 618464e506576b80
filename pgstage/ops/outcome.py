"""After a run ends: log its outcome, reconcile if asked, raise the alerts it calls for.

Called by `run()` around its attempts. Nothing here changes the run's outcome, report
status or exit code: every failure is logged (and, for alerts, recorded) and swallowed.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import connect, execute
from pgstage.errors import AnomalyBlocked, PgstageError, PipelineLocked, RejectLimitExceeded
from pgstage.ops import alerts, logs
from pgstage.pipeline import ledger
from pgstage.report import Counts, RunReport
from pgstage.spec import Spec


def finished(spec: Spec, url: str, report: RunReport, base_dir: Path | None = None) -> RunReport:
    """A run that returned: log it, reconcile after a success if asked, send anomaly / late / recovered.

    `base_dir` is the run's own: reconciliation must read the files the run read.
    """
    logs.emit("run finished", run_id=report.run_id, pipeline=report.pipeline, partition=report.partition,
              status=report.status, seconds=round(report.duration_s, 3), **report.counts.as_dict(),
              dry_run=report.dry_run)
    if report.dry_run or report.status != "succeeded":
        return report
    if spec.load.reconcile == "after_run":
        report = dataclasses.replace(report, reconcile=_reconcile(spec, url, report, base_dir))
    events: list[tuple[str, str]] = []
    rejects = rejects_message(spec, report.counts)
    if rejects is not None:
        events.append(("rejects", rejects))
    if report.anomaly and report.anomaly.get("verdict") == "flagged":
        events.append(("anomaly", f"volume anomaly (merged, action = warn): {report.anomaly.get('reason')}"))
    if report.reconcile and report.reconcile.get("differences"):
        events.append(("reconcile", f"the target differs from the source: {report.reconcile.get('summary')}"))
    if late_since(spec, report.partition) is not None:
        events.append(("late", f"finished after the deadline {spec.alerts.late} UTC of the day after {report.partition}"))
    _alert(spec, url, report.run_id, report.partition, report.status, report.counts.as_dict(),
           report.rejects_by_rule, events, recovery=True)
    return report


def failed(spec: Spec, url: str, partition: str | None, exc: BaseException, seconds: float,
           began: float | None = None) -> None:
    """A run that raised: log it and send `failed`, `rejects` or `anomaly` (a lock held elsewhere is no failure)."""
    report: RunReport | None = getattr(exc, "report", None)
    run_id = report.run_id if report else None
    message = str(exc) if isinstance(exc, PgstageError) else f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PipelineLocked):
        logs.emit("run locked out", pipeline=spec.pipeline.name, partition=partition, message=message)
        return
    if isinstance(exc, RejectLimitExceeded):
        event, status = "rejects", "rejected_threshold"
    elif isinstance(exc, AnomalyBlocked):
        event, status = "anomaly", "blocked"
    else:
        event, status = "failed", "failed"
    if run_id is None and began is not None:
        run_id = _failed_run(url, spec.pipeline.name, partition, began)
    logs.emit("run failed", run_id=run_id, pipeline=spec.pipeline.name, partition=partition, status=status,
              message=message, exit_code=getattr(exc, "exit_code", 1), seconds=round(seconds, 3))
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return
    counts = report.counts.as_dict() if report else _counts_so_far(url, run_id)
    _alert(spec, url, run_id, partition, status, counts, dict(report.rejects_by_rule) if report else {},
           [(event, message)], recovery=False)


def rejects_message(spec: Spec, counts: Counts) -> str | None:
    """Why a merged run with rejects alerts (`[alerts] rejects_above`), or None: its ratio is not above it."""
    limit = spec.alerts.rejects_above
    if limit is None or not counts.rejected or counts.rejected / counts.read <= limit:
        return None
    return (f"{counts.rejected:,} of {counts.read:,} records rejected ({counts.rejected / counts.read:.1%}), above"
            f" [alerts] rejects_above = {limit:g}; the valid rows were merged (max_reject_ratio ="
            f" {spec.load.max_reject_ratio:g})")


def late_since(spec: Spec, partition: str | None, now: datetime | None = None) -> datetime | None:
    """The deadline a partition's run missed (`[alerts] late` on the day after it), if it did."""
    if not spec.alerts.late or not partition:
        return None
    try:
        day = date.fromisoformat(partition)
    except ValueError:
        return None
    hour, minute = map(int, spec.alerts.late.split(":"))
    deadline = datetime.combine(day + timedelta(days=1), time(hour, minute), tzinfo=timezone.utc)
    return deadline if (now or datetime.now(timezone.utc)) > deadline else None


def _reconcile(spec: Spec, url: str, report: RunReport, base_dir: Path | None) -> dict[str, Any]:
    from pgstage.ops import reconcile   # the comparison pulls in the staging path; only a reconciling run needs it

    try:
        result = reconcile.reconcile(spec, partition=report.partition, db=url, base_dir=base_dir,
                                     run_id=report.run_id)
    except PgstageError as exc:
        logs.emit("reconcile failed", run_id=report.run_id, pipeline=report.pipeline, partition=report.partition,
                  message=str(exc))
        return {"error": str(exc), "differences": False}
    return result.as_dict()


def _alert(spec: Spec, url: str, run_id: int | None, partition: str | None, status: str, counts: dict[str, int],
           by_rule: dict[str, int], events: list[tuple[str, str]], *, recovery: bool) -> None:
    if not alerts.targets(spec.alerts):
        return
    try:
        with connect(url) as conn:
            if (recovery and status == "succeeded" and all(e != "rejects" for e, _ in events)
                    and alerts.needs_recovery(conn, spec.pipeline.name)):
                events.append(("recovered", "succeeded after an earlier failure"))
            page = report_link(spec, url, run_id) if events else None
            for event, message in events:
                alerts.send(conn, spec.alerts, alerts.Alert(event, spec.pipeline.name, partition, run_id, status,
                                                            counts, by_rule, message, page))
    except (PgstageError, psycopg.Error, OSError) as exc:
        logs.emit("alert failed", run_id=run_id, pipeline=spec.pipeline.name, partition=partition,
                  error=logs.redact(str(exc)))


def report_link(spec: Spec, url: str, run_id: int | None) -> str | None:
    """Write the run's page into `[alerts] report_dir` and return its link, or None (no dir, no run, or a
    failure, which is logged: the alert goes out without its link)."""
    folder = spec.alerts.report_dir
    if not folder or run_id is None:
        return None
    from pgstage.htmlreport import write_run_report   # jinja2 and pygal: only an alert with a page needs them

    base = spec.path.parent if spec.path else Path.cwd()
    name = f"run-{run_id}.html"
    try:
        directory = base / folder
        directory.mkdir(parents=True, exist_ok=True)
        written = write_run_report(run_id, directory / name, db=url)
    except (PgstageError, psycopg.Error, OSError) as exc:
        logs.emit("alert report failed", run_id=run_id, pipeline=spec.pipeline.name, error=logs.redact(str(exc)))
        return None
    if spec.alerts.report_url:
        return spec.alerts.report_url.rstrip("/") + "/" + name
    return str(written.resolve())


def _counts_so_far(url: str, run_id: int | None) -> dict[str, int]:
    """A failed run's counts: those of the batches it checkpointed before failing (empty if none)."""
    if run_id is None:
        return {}
    try:
        with connect(url) as conn:
            per_file = ledger.batch_counts(conn, run_id)
    except (PgstageError, psycopg.Error):
        return {}
    return sum(per_file.values(), Counts()).as_dict() if per_file else {}


def _failed_run(url: str, pipeline: str, partition: str | None, began: float) -> int | None:
    """The run this failure closed (the exception does not carry it): failed by this process since `began`.

    None when the run failed before it had a run id (a target that disagrees with the spec), or the
    ledger is unreachable: the alert then points at `pgstage runs` rather than at an older run.
    """
    try:
        with connect(url) as conn:
            row = execute(conn, sql.SQL(
                "SELECT max(run_id) FROM pgstage.runs WHERE pipeline = %s AND partition IS NOT DISTINCT FROM %s"
                " AND status = 'failed' AND host = %s AND pid = %s AND finished_at >= to_timestamp(%s) - interval '5s'"),
                (pipeline, partition, socket.gethostname(), os.getpid(), began), label="outcome: failed run").fetchone()
            return int(row[0]) if row and row[0] is not None else None
    except (PgstageError, psycopg.Error):
        return None
