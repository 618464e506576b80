"""Read this first: one run of a pipeline, top to bottom as in SPEC §4.

    lock → skip files already loaded → for each file: extract+stage, validate(+transform)
    → reject threshold → in one transaction: create/check target, merge each file,
    fingerprint it, close the run → report.

Nothing reaches the target unless the whole run passes its reject threshold, and the
merge, the fingerprints and the run's final status commit together.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import psycopg

from pgstage import target
from pgstage.db import connect, resolve_url
from pgstage.errors import PgstageError, RejectLimitExceeded, UsageError
from pgstage.pipeline import ledger, merge, stage, transform, validate
from pgstage.pipeline.extract import SourceFile, resolve_files
from pgstage.report import Counts, FileReport, RunReport
from pgstage.safety import pipeline_lock
from pgstage.spec import Spec, load_spec


@dataclass
class RejectLimitReport(RejectLimitExceeded):
    """RejectLimitExceeded that carries the run's report for the CLI to show."""

    report: RunReport | None = None


def parse_partition(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--partition {value!r} is not a date", hint="use YYYY-MM-DD, e.g. 2024-01-15") from None


def run(spec: Spec | str | Path, *, partition: str | date | None = None, db: str | None = None,
        base_dir: Path | None = None, force: bool = False) -> RunReport:
    """Load one (pipeline, partition) and return its report; raises PgstageError subclasses."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    day = parse_partition(partition)
    part = day.isoformat() if day else None
    base = base_dir or (spec.path.parent if spec.path else Path.cwd())
    files = resolve_files(spec.source.path, base, day)
    started = time.perf_counter()
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        types = transform.resolve_types(conn, spec)
        target.check(conn, spec, types)
        with pipeline_lock(conn, spec.pipeline.name, part):
            todo = [f for f in files if force or ledger.loaded_before(conn, spec.pipeline.name, f) is None]
            skipped = tuple(FileReport(f.name, "skipped") for f in files if f not in todo)
            run_id = ledger.start_run(conn, spec.pipeline.name, part, spec.pipeline.target,
                                      str(spec.path) if spec.path else None)
            if not todo:
                report = RunReport(run_id, spec.pipeline.name, part, "skipped", Counts(), {},
                                   time.perf_counter() - started, spec.pipeline.target, skipped,
                                   "every file was loaded before (use --force to load again)")
                ledger.finish_run(conn, run_id, "skipped", report.counts, {}, _file_rows(report.files))
                return report
            try:
                return _load(conn, spec, types, todo, skipped, run_id, part, started)
            except BaseException as exc:
                if not conn.closed and not isinstance(exc, RejectLimitExceeded):
                    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        conn.rollback()
                    ledger.fail_run(conn, run_id, str(exc) if isinstance(exc, PgstageError) else repr(exc))
                raise
            finally:
                if not conn.closed:
                    for i in range(len(todo)):
                        stage.drop(conn, f"_stg_{run_id}_{i}")
                        stage.drop(conn, f"_chk_{run_id}_{i}")


def _load(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, transform.ColumnType], todo: list[SourceFile],
          skipped: tuple[FileReport, ...], run_id: int, part: str | None, started: float) -> RunReport:
    checked: list[validate.Checked] = []
    for i, source in enumerate(todo):
        staged = stage.stage_file(conn, spec, source, f"_stg_{run_id}_{i}")
        checked.append(validate.check(conn, spec, types, staged, f"_chk_{run_id}_{i}", run_id))

    read = sum(c.staged.read for c in checked)
    rejected = sum(len(c.staged.quarantined) + c.rejected_by_rules for c in checked)
    by_rule = ledger.rejects_by_rule(conn, run_id)
    limit = spec.load.max_reject_ratio
    if read and rejected / read > limit:
        counts = Counts(read=read, rejected=rejected, valid=read - rejected)
        files = tuple(FileReport(c.staged.source.name, "rejected", _pre_merge(c), c.staged.ignored_fields) for c in checked)
        report = RunReport(run_id, spec.pipeline.name, part, "rejected_threshold", counts, by_rule,
                           time.perf_counter() - started, spec.pipeline.target, (*files, *skipped))
        message = (f"{rejected} of {read} records rejected ({rejected / read:.1%}), above max_reject_ratio {limit:g}:"
                   " nothing was merged")
        ledger.finish_run(conn, run_id, "rejected_threshold", counts, by_rule, _file_rows(report.files), message)
        top = ", ".join(f"{rule} ({n})" for rule, n in list(by_rule.items())[:3])
        raise RejectLimitReport(message + (f"; top rules: {top}" if top else ""),
                                hint=f"see `pgstage show {run_id}` for sample rejects; fix the source or raise"
                                     " load.max_reject_ratio", report=report)

    reports: list[FileReport] = []
    with conn.transaction():
        target.ensure(conn, spec, types)
        for c in checked:
            m = merge.merge(conn, spec, types, c, run_id)
            pre = _pre_merge(c)
            counts = Counts(read=pre.read, rejected=pre.rejected, valid=pre.valid, duplicate=pre.valid - m.distinct,
                            inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale)
            reports.append(FileReport(c.staged.source.name, "loaded", counts, c.staged.ignored_fields))
            ledger.record_file(conn, spec.pipeline.name, c.staged.source, run_id)
        total = sum((r.counts for r in reports), Counts())
        report = RunReport(run_id, spec.pipeline.name, part, "succeeded", total, by_rule,
                           time.perf_counter() - started, spec.pipeline.target, (*reports, *skipped))
        ledger.finish_run(conn, run_id, "succeeded", total, by_rule, _file_rows(report.files))
    return report


def _pre_merge(c: validate.Checked) -> Counts:
    rejected = len(c.staged.quarantined) + c.rejected_by_rules
    return Counts(read=c.staged.read, rejected=rejected, valid=c.staged.read - rejected)


def _file_rows(files: tuple[FileReport, ...]) -> list[dict[str, Any]]:
    return [{"path": f.path, "status": f.status, "rows": f.counts.as_dict(), "ignored_fields": list(f.ignored_fields)}
            for f in files]
