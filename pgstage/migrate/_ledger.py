"""`pgstage.migrations`: every change `migrate --apply` starts, how far it got, and how to undo it.

A row is written before a change's first step; each step then commits together with the
row's `steps_done` (a batched backfill with its `progress`, the next heap page), so a crash at
any instant leaves the row saying exactly where to resume. `rollback_sql` is for people to
read; an undo is rebuilt from `kind` and `detail`, never run from stored text.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.migrate._steps import COPY_COLUMN_FUNCTION

_DDL = [
    sql.SQL("CREATE SCHEMA IF NOT EXISTS pgstage"),
    sql.SQL("""CREATE TABLE IF NOT EXISTS pgstage.migrations (
        migration_id  bigserial PRIMARY KEY,
        target        text NOT NULL,
        kind          text NOT NULL,
        subject       text NOT NULL,
        summary       text NOT NULL,
        detail        jsonb NOT NULL,
        status        text NOT NULL CHECK (status IN ('running', 'applied', 'rolled_back')),
        steps_done    integer NOT NULL DEFAULT 0,
        progress      jsonb,
        applied_sql   text[] NOT NULL DEFAULT '{}',
        rollback_sql  text,
        rows_written  bigint NOT NULL DEFAULT 0,
        started_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz,
        rolled_back_at timestamptz)"""),
    COPY_COLUMN_FUNCTION,
]


def ensure(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended('pgstage:migrations:ddl', 0))"),
                label="migrations: ddl lock")
        for statement in _DDL:
            execute(conn, statement, label="migrations: ledger")


def running(conn: psycopg.Connection[Any], target: str) -> list[dict[str, Any]]:
    """The changes an earlier apply started on this target and did not finish, oldest first."""
    rows = execute(conn, sql.SQL(
        "SELECT migration_id, kind, subject, detail, steps_done, progress FROM pgstage.migrations"
        " WHERE target = %s AND status = 'running' ORDER BY migration_id"), (target,),
        label="migrations: running").fetchall()
    return [{"migration_id": r[0], "kind": r[1], "subject": r[2], "detail": r[3], "steps_done": r[4],
             "progress": r[5]} for r in rows]


def start(conn: psycopg.Connection[Any], target: str, kind: str, subject: str, summary: str,
          detail: dict[str, Any], rollback_sql: str | None) -> int:
    row = execute(conn, sql.SQL(
        "INSERT INTO pgstage.migrations (target, kind, subject, summary, detail, status, rollback_sql)"
        " VALUES (%s, %s, %s, %s, %s, 'running', %s) RETURNING migration_id"),
        (target, kind, subject, summary, json.dumps(detail), rollback_sql), label="migrations: start").fetchone()
    assert row is not None
    return int(row[0])


def step_done(conn: psycopg.Connection[Any], migration_id: int, steps_done: int, statement: str) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.migrations SET steps_done = %s, progress = NULL,"
                          " applied_sql = applied_sql || %s::text WHERE migration_id = %s"),
            (steps_done, statement, migration_id), label="migrations: step")


def batch_done(conn: psycopg.Connection[Any], migration_id: int, next_page: int, last_page: int, rows: int) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.migrations SET progress = %s, rows_written = rows_written + %s"
                          " WHERE migration_id = %s"),
            (json.dumps({"next_page": next_page, "last_page": last_page}), rows, migration_id),
            label="migrations: batch")


def finish(conn: psycopg.Connection[Any], migration_id: int) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.migrations SET status = 'applied', finished_at = now()"
                          " WHERE migration_id = %s"), (migration_id,), label="migrations: applied")


def get(conn: psycopg.Connection[Any], migration_id: int) -> dict[str, Any] | None:
    row = execute(conn, sql.SQL(
        "SELECT migration_id, target, kind, subject, summary, detail, status FROM pgstage.migrations"
        " WHERE migration_id = %s"), (migration_id,), label="migrations: get").fetchone()
    if row is None:
        return None
    return dict(zip(("migration_id", "target", "kind", "subject", "summary", "detail", "status"), row))


def rolled_back(conn: psycopg.Connection[Any], migration_id: int) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.migrations SET status = 'rolled_back', rolled_back_at = now()"
                          " WHERE migration_id = %s"), (migration_id,), label="migrations: rolled back")
