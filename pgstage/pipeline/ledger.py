"""Ledger: the `pgstage` schema in the target database records runs, files and rejects.

A file's fingerprint is written in the same transaction as its merge, so a completed file
is skipped on the next run and a crashed one is not.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.pipeline.extract import SourceFile
from pgstage.pipeline.transform import TRY_TO_TIMESTAMP
from pgstage.report import Counts

SCHEMA_VERSION = 1

_DDL = [
    "CREATE SCHEMA IF NOT EXISTS pgstage",
    """CREATE TABLE IF NOT EXISTS pgstage.runs (
        run_id      bigserial PRIMARY KEY,
        pipeline    text NOT NULL,
        partition   text,
        target      text NOT NULL,
        spec_path   text,
        status      text NOT NULL CHECK (status IN ('running', 'succeeded', 'skipped', 'rejected_threshold', 'failed')),
        started_at  timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz,
        counts      jsonb,
        rejects_by_rule jsonb,
        files       jsonb,
        message     text,
        host        text,
        pid         integer)""",
    "CREATE INDEX IF NOT EXISTS runs_pipeline ON pgstage.runs (pipeline, partition, run_id)",
    """CREATE TABLE IF NOT EXISTS pgstage.files (
        pipeline  text NOT NULL,
        path      text NOT NULL,
        size      bigint NOT NULL,
        sha256    text NOT NULL,
        run_id    bigint NOT NULL REFERENCES pgstage.runs,
        loaded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, path, sha256))""",
    """CREATE TABLE IF NOT EXISTS pgstage.rejects (
        run_id  bigint NOT NULL REFERENCES pgstage.runs,
        file    text NOT NULL,
        record  bigint NOT NULL,
        raw     jsonb NOT NULL,
        reasons jsonb NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS rejects_run ON pgstage.rejects (run_id, file, record)",
]


def ensure(conn: psycopg.Connection[Any]) -> None:
    """Create the ledger if missing; serialized so that concurrent first runs do not collide."""
    with conn.transaction():
        execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended('pgstage:ledger', 0))"), label="ledger: lock")
        for statement in _DDL:
            execute(conn, sql.SQL(statement), label="ledger: ddl")  # type: ignore[arg-type]
        execute(conn, TRY_TO_TIMESTAMP, label="ledger: functions")


def start_run(conn: psycopg.Connection[Any], pipeline: str, partition: str | None, target: str,
              spec_path: str | None) -> int:
    row = execute(conn, sql.SQL(
        "INSERT INTO pgstage.runs (pipeline, partition, target, spec_path, status, host, pid)"
        " VALUES (%s, %s, %s, %s, 'running', %s, %s) RETURNING run_id"),
        (pipeline, partition, target, spec_path, socket.gethostname(), os.getpid()), label="ledger: start").fetchone()
    assert row is not None
    return int(row[0])


def finish_run(conn: psycopg.Connection[Any], run_id: int, status: str, counts: Counts,
               rejects_by_rule: dict[str, int], files: list[dict[str, Any]], message: str | None = None) -> None:
    execute(conn, sql.SQL(
        "UPDATE pgstage.runs SET status = %s, finished_at = clock_timestamp(), counts = %s, rejects_by_rule = %s,"
        " files = %s, message = %s WHERE run_id = %s"),
        (status, json.dumps(counts.as_dict()), json.dumps(rejects_by_rule), json.dumps(files), message, run_id),
        label="ledger: finish")


def fail_run(conn: psycopg.Connection[Any], run_id: int, message: str) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.runs SET status = 'failed', finished_at = clock_timestamp(), message = %s"
                          " WHERE run_id = %s"), (message, run_id), label="ledger: fail")


def loaded_before(conn: psycopg.Connection[Any], pipeline: str, source: SourceFile) -> int | None:
    """The run that already loaded exactly these bytes under this path, if any."""
    row = execute(conn, sql.SQL("SELECT run_id FROM pgstage.files WHERE pipeline = %s AND path = %s AND sha256 = %s"),
                  (pipeline, source.name, source.sha256), label="ledger: fingerprint").fetchone()
    return int(row[0]) if row else None


def record_file(conn: psycopg.Connection[Any], pipeline: str, source: SourceFile, run_id: int) -> None:
    execute(conn, sql.SQL(
        "INSERT INTO pgstage.files (pipeline, path, size, sha256, run_id) VALUES (%s, %s, %s, %s, %s)"
        " ON CONFLICT (pipeline, path, sha256) DO UPDATE SET run_id = EXCLUDED.run_id, loaded_at = now()"),
        (pipeline, source.name, source.size, source.sha256, run_id), label="ledger: file")


def rejects_by_rule(conn: psycopg.Connection[Any], run_id: int) -> dict[str, int]:
    """Rejected records per `column.rule` (a record failing two rules counts under both)."""
    rows = execute(conn, sql.SQL(
        "SELECT concat_ws('.', r->>'column', r->>'rule') AS rule, count(*) FROM pgstage.rejects j,"
        " jsonb_array_elements(j.reasons) r WHERE j.run_id = %s GROUP BY 1 ORDER BY 2 DESC, 1"),
        (run_id,), label="ledger: rejects by rule").fetchall()
    return {rule: int(n) for rule, n in rows}


def list_runs(conn: psycopg.Connection[Any], limit: int = 20, pipeline: str | None = None) -> list[dict[str, Any]]:
    rows = execute(conn, sql.SQL(
        "SELECT run_id, pipeline, partition, status, started_at, finished_at, counts FROM pgstage.runs"
        " WHERE %(pipeline)s::text IS NULL OR pipeline = %(pipeline)s ORDER BY run_id DESC LIMIT %(limit)s"),
        {"pipeline": pipeline, "limit": limit}, label="ledger: runs").fetchall()
    keys = ("run_id", "pipeline", "partition", "status", "started_at", "finished_at", "counts")
    return [dict(zip(keys, row)) for row in rows]


def get_run(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any] | None:
    cursor = execute(conn, sql.SQL("SELECT * FROM pgstage.runs WHERE run_id = %s"), (run_id,), label="ledger: run")
    row = cursor.fetchone()
    if row is None:
        return None
    return {d.name: v for d, v in zip(cursor.description or [], row)}


def sample_rejects(conn: psycopg.Connection[Any], run_id: int, limit: int = 5) -> list[dict[str, Any]]:
    rows = execute(conn, sql.SQL("SELECT file, record, reasons, raw FROM pgstage.rejects WHERE run_id = %s"
                                 " ORDER BY file, record LIMIT %s"), (run_id, limit), label="ledger: sample").fetchall()
    return [{"file": f, "record": r, "reasons": reasons, "raw": raw} for f, r, reasons, raw in rows]
