"""`pgstage migrate --apply` and `--rollback ID`: run a plan's steps safely, record each one.

Pre-checks: the target exists, its row count is the baseline, no run holds the pipeline (the
migration takes the pipeline's lock itself, and those of partitions being loaded). Every DDL
runs under the spec's `lock_timeout`: a statement that cannot get its lock gives up instead
of queueing writers behind it, and is tried again a few times before the migration stops
(re-running resumes it). Backfills update one range of heap pages per transaction, with a
pause between batches, each committed with its progress in `pgstage.migrations`. Post-checks:
no row lost, no NULL where required, every constraint and declared index valid.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage import declared_indexes, faults
from pgstage.db import execute
from pgstage.errors import LOCK_NOT_AVAILABLE, DatabaseError, MigrationFailed, UsageError
from pgstage.migrate import _diff, _ledger, planner as planning
from pgstage.migrate._steps import NOT_NULL_CHECK, Change, Step, Target
from pgstage.pipeline import ledger as run_ledger, transform
from pgstage.safety import apply_session_settings, pipeline_lock
from pgstage.spec import Spec

LOCK_ATTEMPTS = 5
LOCK_BACKOFF_S = 0.5


@dataclass(frozen=True)
class Applied:
    migration_id: int
    kind: str
    subject: str
    summary: str
    steps: int
    rows_written: int


@dataclass(frozen=True)
class MigrationReport:
    target: str
    applied: tuple[Applied, ...]
    rows_before: int
    rows_after: int
    checks: tuple[str, ...]       # the post-checks that passed, in words

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "rows_before": self.rows_before, "rows_after": self.rows_after,
                "checks": list(self.checks), "applied": [a.__dict__ for a in self.applied]}


def apply_plan(conn: psycopg.Connection[Any], spec: Spec, *, drop_removed: bool = False, batch_rows: int = 10_000,
               pause_s: float = 0.0) -> MigrationReport:
    """Plan under the pipeline's lock, then run every change; see the module's docstring."""
    run_ledger.ensure(conn)
    _ledger.ensure(conn)
    apply_session_settings(conn, spec.load)
    with ExitStack() as locks:
        locks.enter_context(pipeline_lock(conn, spec.pipeline.name, None))
        for partition in _loading_partitions(conn, spec):
            locks.enter_context(pipeline_lock(conn, spec.pipeline.name, partition))
        plan = planning.build_plan(conn, spec, drop_removed=drop_removed)
        before = _count(conn, spec)
        _pre_checks(conn, spec, plan, before)
        applied = []
        for change in plan.changes:
            if change.actionable:
                applied.append(_apply_change(conn, spec, plan, change, batch_rows, pause_s))
        after = _count(conn, spec)
        checks = _post_checks(conn, spec, plan, before, after)
    return MigrationReport(spec.pipeline.target, tuple(applied), before, after, tuple(checks))


def _pre_checks(conn: psycopg.Connection[Any], spec: Spec, plan: planning.MigrationPlan, rows: int) -> None:
    """Refuse, before any step, a NOT NULL that existing rows would break half way through."""
    problems = []
    for change in plan.changes:
        if change.migration_id is not None:
            continue   # resumed: its checks ran when it started
        if change.kind == "add_column" and change.detail.get("required") and rows and not any(
                s.backfill for s in change.steps):
            problems.append(f"new column {change.subject!r} is required, but nothing derives it for the {rows:,}"
                            " existing rows (no const, no raw_column)")
        elif change.kind == "add_column" and change.detail.get("required") and change.detail.get("derive") == "raw":
            derived = planning.derivation(spec, transform.resolve_types(conn, spec), change.subject, "raw")
            assert derived is not None
            found = execute(conn, sql.SQL("SELECT count(*) FROM {} WHERE ({}) IS NULL").format(
                sql.Identifier(*spec.target), derived.expression), label="migrate: pre-check").fetchone()
            if found and found[0]:
                problems.append(f"new column {change.subject!r} is required, but {found[0]:,} rows have no valid"
                                f" value in their raw record's field {spec.columns[change.subject].from_!r}")
        if change.kind == "set_not_null":
            found = execute(conn, sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
                sql.Identifier(*spec.target), sql.Identifier(change.subject)), label="migrate: pre-check").fetchone()
            if found and found[0]:
                problems.append(f"column {change.subject!r} is required now, but {found[0]:,} rows are NULL")
    if problems:
        raise MigrationFailed(f"nothing was migrated on {spec.pipeline.target}: " + "; ".join(problems),
                              hint="give those rows a value (a `const`, `pgstage reprocess` from raw records, or an"
                                   " UPDATE), or leave `required` out of the spec until they have one")


def _loading_partitions(conn: psycopg.Connection[Any], spec: Spec) -> list[str]:
    rows = execute(conn, sql.SQL("SELECT DISTINCT partition FROM pgstage.runs WHERE pipeline = %s"
                                 " AND status = 'running' AND partition IS NOT NULL ORDER BY 1"),
                   (spec.pipeline.name,), label="migrate: partitions").fetchall()
    return [r[0] for r in rows]


def _count(conn: psycopg.Connection[Any], spec: Spec) -> int:
    row = execute(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*spec.target)),
                  label="migrate: count").fetchone()
    return int(row[0]) if row else 0


def _apply_change(conn: psycopg.Connection[Any], spec: Spec, plan: planning.MigrationPlan, change: Change,
                  batch_rows: int, pause_s: float) -> Applied:
    rollback_sql = None if change.rollback is None else "; ".join(
        s.statement.as_string() for s in change.rollback if s.statement is not None)
    migration_id = change.migration_id
    if migration_id is None:
        with conn.transaction():
            migration_id = _ledger.start(conn, plan.target, change.kind, change.subject, change.summary,
                                         change.detail, rollback_sql)
    written = 0
    for number, step in enumerate(change.steps):
        if number < change.resumed_at:
            continue
        if step.backfill is not None:
            written += _backfill(conn, spec, migration_id, step, batch_rows, pause_s)
            with conn.transaction():
                _ledger.step_done(conn, migration_id, number + 1, step.backfill.shown().as_string())
        else:
            _run_step(conn, spec, step, partial(_ledger.step_done, conn, migration_id, number + 1,
                                                step.statement.as_string() if step.statement is not None else ""))
    with conn.transaction():
        _ledger.finish(conn, migration_id)
    return Applied(migration_id, change.kind, change.subject, change.summary, len(change.steps), written)


def _run_step(conn: psycopg.Connection[Any], spec: Spec, step: Step, record: Callable[[], None]) -> None:
    """One statement with its ledger record; a lock not granted within lock_timeout is tried again."""
    assert step.statement is not None
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            if step.concurrent:
                if step.index and declared_indexes.index_state(conn, spec.target, step.index) == "invalid":
                    # CREATE INDEX … IF NOT EXISTS would keep the invalid index a crashed build left.
                    execute(conn, declared_indexes.build_drop(spec.target[0], step.index, concurrently=True),
                            label=f"migrate: drop invalid {step.index}")
                execute(conn, step.statement, label=f"migrate: {step.what}")
                with conn.transaction():
                    record()
            else:
                with conn.transaction():
                    execute(conn, step.statement, label=f"migrate: {step.what}")
                    record()
            return
        except DatabaseError as exc:
            if exc.sqlstate != LOCK_NOT_AVAILABLE or attempt == LOCK_ATTEMPTS:
                raise MigrationFailed(
                    f"{step.what} failed on {spec.pipeline.target}: {exc.message}",
                    hint=("the table stayed busy longer than lock_timeout allows; run `pgstage migrate --apply`"
                          " again later: it resumes where it stopped") if exc.sqlstate == LOCK_NOT_AVAILABLE
                    else "fix the cause, then run `pgstage migrate --apply` again: it resumes where it stopped") from exc
            time.sleep(LOCK_BACKOFF_S * attempt)


def _backfill(conn: psycopg.Connection[Any], spec: Spec, migration_id: int, step: Step, batch_rows: int,
              pause_s: float) -> int:
    """Update the target one range of heap pages per transaction, resuming at the recorded page."""
    assert step.backfill is not None
    row = execute(conn, sql.SQL(
        "SELECT progress, (SELECT relpages FROM pg_class WHERE oid = to_regclass(%s)),"
        " (SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)),"
        " pg_relation_size(to_regclass(%s)) / current_setting('block_size')::bigint"
        " FROM pgstage.migrations WHERE migration_id = %s"),
        (*[sql.Identifier(*spec.target).as_string()] * 3, migration_id), label="migrate: pages").fetchone()
    assert row is not None
    progress, relpages, reltuples, pages_now = row[0] or {}, int(row[1] or 0), float(row[2] or 0), int(row[3] or 0)
    per_page = reltuples / relpages if relpages > 0 and reltuples > 0 else 100.0
    batch_pages = max(1, int(batch_rows / per_page))
    page = int(progress.get("next_page", 0))
    last = max(int(progress.get("last_page", 0)), pages_now)
    written = 0
    while True:
        while page < last:
            end = min(page + batch_pages, last)
            with conn.transaction():
                cursor = execute(conn, step.backfill.batch(page, end), label=f"migrate: {step.what}")
                _ledger.batch_done(conn, migration_id, end, last, cursor.rowcount)
            faults.hit("migrate.batch")
            written += max(cursor.rowcount, 0)
            page = end
            if pause_s:
                time.sleep(pause_s)
        # Rows written meanwhile may sit on pages added since: one more pass over those.
        grown = execute(conn, sql.SQL("SELECT pg_relation_size(to_regclass(%s)) / current_setting('block_size')::bigint"),
                        (sql.Identifier(*spec.target).as_string(),), label="migrate: pages").fetchone()
        if not grown or int(grown[0]) <= last:
            return written
        last = int(grown[0])


def _post_checks(conn: psycopg.Connection[Any], spec: Spec, plan: planning.MigrationPlan, before: int,
                 after: int) -> list[str]:
    problems, passed = [], []
    if after < before:
        problems.append(f"the target had {before:,} rows before and {after:,} after")
    else:
        passed.append(f"no row lost ({before:,} before, {after:,} after)")
    found = _diff.columns(conn, spec.target)
    for change in plan.changes:
        if change.kind in ("add_column", "set_not_null") and spec.columns.get(change.subject, None) is not None \
                and spec.columns[change.subject].required:
            nulls = execute(conn, sql.SQL("SELECT count(*) FROM {} WHERE {} IS NULL").format(
                sql.Identifier(*spec.target), sql.Identifier(change.subject)), label="migrate: nulls").fetchone()
            if nulls and nulls[0]:
                problems.append(f"column {change.subject!r} is required but {nulls[0]:,} rows are NULL")
            elif not found.get(change.subject) or not found[change.subject].not_null:
                problems.append(f"column {change.subject!r} is required but not NOT NULL")
            else:
                passed.append(f"column {change.subject!r}: NOT NULL, no NULL")
    invalid = execute(conn, sql.SQL(
        "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND NOT convalidated ORDER BY 1"),
        (sql.Identifier(*spec.target).as_string(),), label="migrate: constraints").fetchall()
    problems += [f"constraint {name!r} is not valid" for (name,) in invalid]
    leftover = [name for name in found if name.startswith(NOT_NULL_CHECK)]
    problems += [f"column {name!r} is left over" for name in leftover]
    for name in spec.indexes:
        state = declared_indexes.index_state(conn, spec.target, name)
        if state != "valid":
            problems.append(f"index {name!r} is {state or 'missing'}")
    if not invalid:
        passed.append("every constraint valid")
    if spec.indexes and not any(p.startswith("index") for p in problems):
        passed.append("every declared index valid")
    if problems:
        raise MigrationFailed(f"migration of {spec.pipeline.target} applied, but its post-checks failed: "
                              + "; ".join(problems), hint="inspect the target; `pgstage migrate --plan` shows what is left")
    return passed


def rollback_change(conn: psycopg.Connection[Any], spec: Spec, migration_id: int) -> Applied:
    """Undo one applied change, where undo is possible; says why when it is not."""
    _ledger.ensure(conn)
    apply_session_settings(conn, spec.load)
    row = _ledger.get(conn, migration_id)
    if row is None or row["target"] != spec.pipeline.target:
        raise UsageError(f"no migration {migration_id} of {spec.pipeline.target}",
                         hint="`SELECT * FROM pgstage.migrations` lists them")
    if row["status"] != "applied":
        raise UsageError(f"migration {migration_id} ({row['summary']}) is {row['status']}, not applied",
                         hint="a running migration is finished by `pgstage migrate --apply`" if row["status"] == "running"
                         else None)
    with pipeline_lock(conn, spec.pipeline.name, None):
        types = transform.resolve_types(conn, spec)
        target = Target(*spec.target, rows=_diff.estimated_rows(conn, spec.target))
        change = planning.build_change(spec, types, target, row["kind"], row["detail"], drop_removed=True)
        if change is None or change.rollback is None:
            why = (change.note or "").removeprefix("cannot be undone: ") if change is not None else ""
            why = why or "nothing records how"
            raise MigrationFailed(f"migration {migration_id} ({row['summary']}) cannot be undone: {why}")
        for step in change.rollback:
            _run_step(conn, spec, step, lambda: None)
        with conn.transaction():
            _ledger.rolled_back(conn, migration_id)
    return Applied(migration_id, row["kind"], row["subject"], row["summary"], len(change.rollback), 0)
