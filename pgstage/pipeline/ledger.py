"""Ledger: the `pgstage` schema in the target database records runs, files, watermarks and rejects.

A file's fingerprint (a postgres source's watermark) is written in the same transaction as
its last merge, so a completed file is skipped on the next run and a crashed one is not.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage.db import execute, mask, relation_exists
from pgstage.names import CHECKED_PREFIX, COLLECTOR_PREFIX, DUPLICATES_PREFIX, LEDGER_SCHEMA, SEEN_PREFIX, STAGED_PREFIX
from pgstage.pipeline._functions import INSTALL
from pgstage.report import Counts
from pgstage.spec import Spec

if TYPE_CHECKING:   # a run that loads nothing reads the ledger without the extract and staging steps
    from pgstage.pipeline.extract import SourceFile
    from pgstage.pipeline.stage import StagedBatch, StartPoint

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
    """CREATE TABLE IF NOT EXISTS pgstage.files (
        pipeline  text NOT NULL,
        path      text NOT NULL,
        size      bigint NOT NULL,
        sha256    text NOT NULL,
        run_id    bigint NOT NULL REFERENCES pgstage.runs,
        loaded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, path, sha256))""",
    """CREATE TABLE IF NOT EXISTS pgstage.rejects (
        run_id   bigint NOT NULL,
        file     text NOT NULL,
        batch_no integer NOT NULL DEFAULT 0,
        record   bigint NOT NULL,
        raw      jsonb NOT NULL,
        reasons  jsonb NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pgstage.batches (
        run_id       bigint NOT NULL REFERENCES pgstage.runs,
        file         text NOT NULL,
        sha256       text NOT NULL,
        batch_no     integer NOT NULL,
        byte_start   bigint NOT NULL,
        byte_end     bigint NOT NULL,
        record_start bigint NOT NULL,
        record_end   bigint NOT NULL,
        status       text NOT NULL CHECK (status IN ('validated', 'merged')),
        counts       jsonb NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (run_id, file, batch_no))""",
    """CREATE TABLE IF NOT EXISTS pgstage.index_rebuilds (
        target     text NOT NULL,
        index_name text NOT NULL,
        definition text NOT NULL,
        run_id     bigint NOT NULL,
        dropped_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (target, index_name))""",
    """CREATE TABLE IF NOT EXISTS pgstage.watermarks (
        pipeline   text NOT NULL,
        source     text NOT NULL,
        watermark  timestamptz NOT NULL,
        run_id     bigint NOT NULL REFERENCES pgstage.runs,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (pipeline, source))""",
    # Every alert delivery attempt (pgstage/ops/alerts.py); `target` holds the URL with its secret masked.
    """CREATE TABLE IF NOT EXISTS pgstage.alerts (
        alert_id   bigserial PRIMARY KEY,
        run_id     bigint,
        pipeline   text NOT NULL,
        partition  text,
        event      text NOT NULL,
        target     text NOT NULL,
        status     text NOT NULL CHECK (status IN ('sent', 'failed', 'suppressed')),
        attempts   integer NOT NULL DEFAULT 0,
        error      text,
        payload    jsonb,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    # Throttling (pgstage/throttle.py): one row per pause, by reason.
    """CREATE TABLE IF NOT EXISTS pgstage.pauses (
        run_id     bigint NOT NULL,
        reason     text NOT NULL,
        detail     text NOT NULL,
        started_at timestamptz NOT NULL,
        seconds    float8 NOT NULL)""",
    # Chunked merges (load.merge_chunk_rows): each chunk of a batch commits with its row here; a
    # resumed batch skips the records of its committed chunks and adds their counts.
    """CREATE TABLE IF NOT EXISTS pgstage.chunks (
        run_id       bigint NOT NULL,
        file         text NOT NULL,
        sha256       text NOT NULL,
        batch_no     integer NOT NULL,
        record_end   bigint NOT NULL,
        counts       jsonb NOT NULL,
        committed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (run_id, file, sha256, batch_no, record_end))""",
]

# Indexes, and what ledgers of earlier versions lack: (is the change needed?, the change). Each
# runs only when needed, as even a no-op ALTER TABLE or CREATE INDEX waits for a table lock,
# behind any run that is writing rejects at that moment.
_UPGRADES = [
    # CREATE INDEX IF NOT EXISTS locks the table (SHARE) before it looks for the index.
    *((f"SELECT to_regclass('pgstage.{name}') IS NULL", f"CREATE INDEX IF NOT EXISTS {name} ON pgstage.{on}")
      for name, on in (("runs_pipeline", "runs (pipeline, partition, run_id)"),
                       ("rejects_run", "rejects (run_id, file, record)"))),
    *((f"SELECT NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pgstage.{table}'::regclass"
       f" AND attname = '{column}' AND NOT attisdropped)",
       f"ALTER TABLE pgstage.{table} ADD COLUMN IF NOT EXISTS {column} {definition}")
      for table, column, definition in (("runs", "attempts", "integer NOT NULL DEFAULT 1"),
                                        ("rejects", "batch_no", "integer NOT NULL DEFAULT 0"),
                                        ("runs", "dry_run", "boolean NOT NULL DEFAULT false"),
                                        ("rejects", "resolved_by", "bigint"),
                                        # when each phase of a batch ran and the spec a run used (the HTML report)
                                        ("batches", "timings", "jsonb"),
                                        ("runs", "spec", "jsonb"),
                                        # pgstage/ops: the volume verdict and the reconcile result of a run
                                        ("runs", "anomaly", "jsonb"),
                                        ("runs", "reconcile", "jsonb"),
                                        # the backfill whose whole length an index stays dropped for
                                        # (pgstage/backfill/held.py); NULL: the run's own, rebuilt at its end
                                        ("index_rebuilds", "backfill_id", "bigint"))),
    # A backfill drops indexes before any of its runs exists: its rows have no run.
    ("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'pgstage.index_rebuilds'::regclass AND attname = 'run_id'",
     "ALTER TABLE pgstage.index_rebuilds ALTER COLUMN run_id DROP NOT NULL"),
    # A run a volume anomaly blocked (pgstage/ops/anomalies.py) ends `blocked`: nothing merged, exit 5.
    ("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pgstage.runs'::regclass"
     " AND conname = 'runs_status_check' AND pg_get_constraintdef(oid) NOT LIKE '%blocked%')",
     "ALTER TABLE pgstage.runs DROP CONSTRAINT runs_status_check, ADD CONSTRAINT runs_status_check CHECK (status IN"
     " ('running', 'succeeded', 'skipped', 'rejected_threshold', 'failed', 'blocked'))"),
    # No foreign key from rejects to runs: its per-row check cost 10 us a reject (a fifth of a
    # dirty file's overhead). Rejects are only written in the transaction of their batch's row
    # in pgstage.batches, which references the run.
    ("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = 'pgstage.rejects'::regclass"
     " AND conname = 'rejects_run_id_fkey')",
     "ALTER TABLE pgstage.rejects DROP CONSTRAINT IF EXISTS rejects_run_id_fkey"),
]


# What `ensure` makes of a ledger, as one stamp: any change to the tables, the upgrades or the functions above
# changes it. `ensure` writes it as the ledger schema's comment once everything is in place; a ledger that
# carries it (and still has every table and function) is current, which one query tells. A ledger of an
# earlier version, or one stamped by another version of pgstage, goes through every step again.
_TABLES = tuple(re.findall(r"CREATE TABLE IF NOT EXISTS pgstage\.(\w+)", "\n".join(_DDL)))
_FUNCTIONS = tuple(sorted({name for f in INSTALL for name in re.findall(r"FUNCTION pgstage\.(\w+)", f.as_string())}))


def stamp_of(ddl: list[str], upgrades: list[tuple[str, str]], functions: tuple[sql.SQL, ...]) -> str:
    text = "\n".join([*ddl, *(f"{needed}\n{change}" for needed, change in upgrades),
                      *(f.as_string() for f in functions)])
    return "pgstage ledger " + hashlib.sha256(text.encode()).hexdigest()[:16]


STAMP = stamp_of(_DDL, _UPGRADES, INSTALL)


def build_current() -> sql.Composed:
    """True when the ledger carries this version's stamp and every table and function (no row: no ledger).

    Parameters: the stamp, the table names and their number, the function names and their number.
    """
    return sql.SQL(
        "SELECT obj_description(n.oid, 'pg_namespace') = %(stamp)s"
        " AND (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'r'"
        "      AND c.relname = ANY(%(tables)s)) = %(table_count)s"
        " AND (SELECT count(DISTINCT p.proname) FROM pg_proc p WHERE p.pronamespace = n.oid"
        "      AND p.proname = ANY(%(functions)s)) = %(function_count)s"
        " FROM pg_namespace n WHERE n.nspname = %(schema)s").format()


def current(conn: psycopg.Connection[Any]) -> bool:
    """Whether the ledger is this version's, complete: then `ensure` has nothing to do."""
    row = execute(conn, build_current(), {"stamp": STAMP, "tables": list(_TABLES), "table_count": len(_TABLES),
                                          "functions": list(_FUNCTIONS), "function_count": len(_FUNCTIONS),
                                          "schema": LEDGER_SCHEMA}, label="ledger: current?").fetchone()
    return bool(row and row[0])


def ensure(conn: psycopg.Connection[Any]) -> None:
    """Create the ledger if missing, upgrade an older one; serialized so that concurrent first runs do not collide.

    A current ledger costs one query (`current`), not the two dozen statements and the transaction of the
    steps below, which every run and every command paid before (issue #18: the no-op run's round trips).
    """
    if current(conn):
        return
    with conn.transaction():
        # Before the run's own settings: never queue for long behind another session's lock.
        execute(conn, sql.SQL("SET LOCAL lock_timeout = '10s'"), label="ledger: lock timeout")
        execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended('pgstage:ledger', 0))"), label="ledger: lock")
        for statement in _DDL:
            execute(conn, sql.SQL(statement), label="ledger: ddl")  # type: ignore[arg-type]
        for needed, change in _UPGRADES:
            found = execute(conn, sql.SQL(needed), label="ledger: upgrade?").fetchone()  # type: ignore[arg-type]
            if found and found[0]:
                execute(conn, sql.SQL(change), label="ledger: upgrade")  # type: ignore[arg-type]
        for function in INSTALL:
            execute(conn, function, label="ledger: functions")
        execute(conn, sql.SQL("COMMENT ON SCHEMA pgstage IS {}").format(sql.Literal(STAMP)), label="ledger: stamp")


def start_run(conn: psycopg.Connection[Any], pipeline: str, partition: str | None, target: str,
              spec_path: str | None, *, dry_run: bool = False, spec: dict[str, Any] | None = None) -> int:
    """`spec` is the resolved spec with its secrets already masked (see `spec_document`)."""
    row = execute(conn, sql.SQL(
        "INSERT INTO pgstage.runs (pipeline, partition, target, spec_path, status, host, pid, dry_run, spec)"
        " VALUES (%s, %s, %s, %s, 'running', %s, %s, %s, %s) RETURNING run_id"),
        (pipeline, partition, target, spec_path, socket.gethostname(), os.getpid(), dry_run,
         None if spec is None else json.dumps(spec)),
        label="ledger: start").fetchone()
    assert row is not None
    return int(row[0])


def finish_run(conn: psycopg.Connection[Any], run_id: int, status: str, counts: Counts,
               rejects_by_rule: dict[str, int], files: list[dict[str, Any]], message: str | None = None) -> None:
    execute(conn, sql.SQL(
        "UPDATE pgstage.runs SET status = %s, finished_at = clock_timestamp(), counts = %s, rejects_by_rule = %s,"
        " files = %s, message = %s WHERE run_id = %s"),
        (status, json.dumps(counts.as_dict()), json.dumps(rejects_by_rule), json.dumps(files), message, run_id),
        label="ledger: finish")


def resumable_run(conn: psycopg.Connection[Any], pipeline: str, partition: str | None) -> int | None:
    """The pipeline's latest run for this partition if it never finished (killed, or failed midway).

    Called under the pipeline lock, so a run still marked `running` is one whose process died.
    """
    row = execute(conn, sql.SQL(
        "SELECT run_id, status FROM pgstage.runs WHERE pipeline = %s AND partition IS NOT DISTINCT FROM %s"
        " AND NOT dry_run ORDER BY run_id DESC LIMIT 1"), (pipeline, partition), label="ledger: resumable").fetchone()
    return int(row[0]) if row and row[1] in ("running", "failed") else None


def reopen_run(conn: psycopg.Connection[Any], run_id: int) -> None:
    execute(conn, sql.SQL(
        "UPDATE pgstage.runs SET status = 'running', attempts = attempts + 1, finished_at = NULL, message = NULL,"
        " host = %s, pid = %s WHERE run_id = %s"), (socket.gethostname(), os.getpid(), run_id), label="ledger: reopen")


def discard_unmerged(conn: psycopg.Connection[Any], run_id: int) -> None:
    """Forget what an interrupted attempt staged but did not merge: its batches and their rejects."""
    with conn.transaction():
        execute(conn, sql.SQL(
            "DELETE FROM pgstage.rejects r WHERE r.run_id = %(run)s AND NOT EXISTS (SELECT 1 FROM pgstage.batches b"
            " WHERE b.run_id = r.run_id AND b.file = r.file AND b.batch_no = r.batch_no AND b.status = 'merged')"),
            {"run": run_id}, label="ledger: discard rejects")
        execute(conn, sql.SQL("DELETE FROM pgstage.batches WHERE run_id = %s AND status <> 'merged'"), (run_id,),
                label="ledger: discard batches")


def start_point(conn: psycopg.Connection[Any], run_id: int, source: SourceFile) -> StartPoint:
    """Where to resume a file: after its last merged batch of the same bytes, else at its start.

    The file's digest is asked for only when the run merged some of it before: a file the run
    has not merged yet may be staged while its digest is still being computed (extract/digest.py).
    """
    from pgstage.pipeline.stage import StartPoint

    row = execute(conn, sql.SQL(
        "SELECT max(batch_no), max(byte_end), max(record_end), min(sha256), max(sha256)"
        " FROM pgstage.batches WHERE run_id = %s AND file = %s AND status = 'merged'"),
        (run_id, source.name), label="ledger: start point").fetchone()
    if row is None or row[0] is None:
        return StartPoint()
    last_batch, byte_end, record_end, least, greatest = row
    if not least == greatest == source.sha256:  # the file changed since the interrupted attempt: load the new bytes whole
        return StartPoint(batch_no=last_batch + 1, changed=True)
    return StartPoint(byte_offset=int(byte_end), record=int(record_end) + 1, batch_no=int(last_batch) + 1)


def record_batch(conn: psycopg.Connection[Any], run_id: int, batch: StagedBatch, counts: Counts, status: str,
                 timings: dict[str, tuple[float, float]] | None = None) -> None:
    """`timings`: phase name -> (start, end) in Unix seconds, added to those already recorded."""
    execute(conn, sql.SQL(
        "INSERT INTO pgstage.batches (run_id, file, sha256, batch_no, byte_start, byte_end, record_start, record_end,"
        " status, counts, timings) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (run_id, file, batch_no) DO UPDATE SET status = EXCLUDED.status, counts = EXCLUDED.counts,"
        " committed_at = clock_timestamp(),"
        " timings = coalesce(pgstage.batches.timings, '{}') || coalesce(EXCLUDED.timings, '{}')"),
        (run_id, batch.source.name, batch.source.sha256, batch.batch_no, batch.byte_start, batch.byte_end,
         batch.record_start, batch.record_end, status, json.dumps(counts.as_dict()),
         json.dumps(timings) if timings else None), label="ledger: batch")


def batch_counts(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Counts]:
    """Counts per file, summed over the run's batches (merged and validated) — the run's truth."""
    rows = execute(conn, sql.SQL("SELECT file, counts FROM pgstage.batches WHERE run_id = %s ORDER BY file, batch_no"),
                   (run_id,), label="ledger: batch counts").fetchall()
    totals: dict[str, Counts] = {}
    for file, counts in rows:
        totals[file] = totals.get(file, Counts()) + Counts(**counts)
    return totals


def orphan_tables(conn: psycopg.Connection[Any], run_id: int | None = None) -> list[str]:
    """Staging tables of runs that are not running (killed attempts), or of one run."""
    rows = execute(conn, sql.SQL(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relkind = 'r' AND c.relname ~ %(pattern)s"
        " AND (%(run)s::bigint IS NULL OR split_part(c.relname, '_', 3)::bigint = %(run)s)"
        " AND NOT EXISTS (SELECT 1 FROM pgstage.runs r WHERE r.run_id = split_part(c.relname, '_', 3)::bigint"
        "   AND r.status = 'running' AND %(run)s::bigint IS NULL)"),
        {"run": run_id, "schema": LEDGER_SCHEMA, "pattern": f"^({STAGED_PREFIX}|{CHECKED_PREFIX})_[0-9]+_"},
        label="ledger: orphans").fetchall()
    return [r[0] for r in rows]


def finished_duplicate_tables(conn: psycopg.Connection[Any]) -> list[str]:
    """Cross-batch duplicate tables (`_dup_<run>`), replace_partition collectors (`_rp_<run>`) and scd2 seen keys
    (`_seen_<run>`) of runs that will never be resumed."""
    rows = execute(conn, sql.SQL(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname ~ %s"
        " AND NOT EXISTS (SELECT 1 FROM pgstage.runs r WHERE r.run_id = split_part(c.relname, '_', 3)::bigint"
        "   AND r.status IN ('running', 'failed'))"),
        (LEDGER_SCHEMA, f"^({DUPLICATES_PREFIX}|{COLLECTOR_PREFIX}|{SEEN_PREFIX})_[0-9]+$"),
        label="ledger: finished duplicates").fetchall()
    return [r[0] for r in rows]


def started_at(conn: psycopg.Connection[Any], run_id: int) -> datetime:
    """When the run started: a resumed run keeps it (scd2's default as-of time)."""
    row = execute(conn, sql.SQL("SELECT started_at FROM pgstage.runs WHERE run_id = %s"), (run_id,),
                  label="ledger: started").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    return relation_exists(conn, LEDGER_SCHEMA, table)


def fail_run(conn: psycopg.Connection[Any], run_id: int, message: str) -> None:
    execute(conn, sql.SQL("UPDATE pgstage.runs SET status = 'failed', finished_at = clock_timestamp(), message = %s"
                          " WHERE run_id = %s"), (message, run_id), label="ledger: fail")


def fail_own_run(conn: psycopg.Connection[Any], pipeline: str, partition: str | None, message: str) -> None:
    """Mark failed the run this process left `running` for (pipeline, partition), once its retries gave up.

    Found by host and pid, which `start_run` and `reopen_run` record: the attempt that started
    it may have died before its caller learned the run id.
    """
    execute(conn, sql.SQL(
        "UPDATE pgstage.runs SET status = 'failed', finished_at = clock_timestamp(), message = %s"
        " WHERE pipeline = %s AND partition IS NOT DISTINCT FROM %s AND status = 'running' AND host = %s AND pid = %s"),
        (message, pipeline, partition, socket.gethostname(), os.getpid()), label="ledger: fail own run")


def loaded_before(conn: psycopg.Connection[Any], pipeline: str, source: SourceFile) -> int | None:
    """The run that already loaded exactly these bytes under this path, if any.

    The file's digest is asked for only when the ledger holds its path: a path never loaded is
    never skipped, so its file may be staged while its digest is still being computed
    (extract/digest.py).
    """
    rows = execute(conn, sql.SQL("SELECT sha256, run_id FROM pgstage.files WHERE pipeline = %s AND path = %s"),
                   (pipeline, source.name), label="ledger: fingerprint").fetchall()
    if not rows:
        return None
    sha256 = source.sha256
    return next((int(run_id) for digest, run_id in rows if digest == sha256), None)


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
        "SELECT run_id, pipeline, partition, status, started_at, finished_at, counts, attempts, dry_run FROM pgstage.runs"
        " WHERE %(pipeline)s::text IS NULL OR pipeline = %(pipeline)s ORDER BY run_id DESC LIMIT %(limit)s"),
        {"pipeline": pipeline, "limit": limit}, label="ledger: runs").fetchall()
    keys = ("run_id", "pipeline", "partition", "status", "started_at", "finished_at", "counts", "attempts", "dry_run")
    return [dict(zip(keys, row)) for row in rows]


def get_run(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any] | None:
    cursor = execute(conn, sql.SQL("SELECT * FROM pgstage.runs WHERE run_id = %s"), (run_id,), label="ledger: run")
    row = cursor.fetchone()
    if row is None:
        return None
    return {d.name: v for d, v in zip(cursor.description or [], row)}


def run_batches(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    cursor = execute(conn, sql.SQL(
        "SELECT file, batch_no, record_start, record_end, byte_start, byte_end, status, counts, committed_at, timings"
        " FROM pgstage.batches WHERE run_id = %s ORDER BY file, batch_no"), (run_id,), label="ledger: batches")
    return [{d.name: v for d, v in zip(cursor.description or [], row)} for row in cursor.fetchall()]


def sample_rejects(conn: psycopg.Connection[Any], run_id: int, limit: int = 5) -> list[dict[str, Any]]:
    rows = execute(conn, sql.SQL("SELECT file, record, reasons, raw FROM pgstage.rejects WHERE run_id = %s"
                                 " ORDER BY file, record LIMIT %s"), (run_id, limit), label="ledger: sample").fetchall()
    return [{"file": f, "record": r, "reasons": reasons, "raw": raw} for f, r, reasons, raw in rows]


def spec_document(spec: Spec) -> dict[str, Any]:
    """The resolved spec as JSON for the ledger, the source URL's password masked."""
    document = spec.model_dump(mode="json", exclude_none=True, by_alias=True)
    if spec.source.url:
        document.setdefault("source", {})["url"] = mask(spec.source.url)
    return document


def watermark(conn: psycopg.Connection[Any], pipeline: str, source: str) -> datetime | None:
    """The last committed watermark of a postgres source; None before its first successful merge."""
    row = execute(conn, sql.SQL("SELECT watermark FROM pgstage.watermarks WHERE pipeline = %s AND source = %s"),
                  (pipeline, source), label="ledger: watermark").fetchone()
    return row[0] if row else None


def build_seen_watermark(batches: list[StagedBatch], field: str) -> sql.Composed:
    """The greatest change time among the staged rows of a run's batches (pure)."""
    return sql.SQL("SELECT max(m) FROM ({}) w").format(sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT max({}::timestamptz) AS m FROM {}").format(b.column(field), b.ident) for b in batches))


def seen_watermark(conn: psycopg.Connection[Any], batches: list[StagedBatch], field: str) -> datetime | None:
    if not batches:
        return None
    row = execute(conn, build_seen_watermark(batches, field), label="ledger: seen watermark").fetchone()
    return row[0] if row else None


def record_watermark(conn: psycopg.Connection[Any], pipeline: str, source: str, value: datetime, run_id: int) -> None:
    """Move the watermark forward (never back: a hard-deleted newest row must not make it regress)."""
    execute(conn, sql.SQL(
        "INSERT INTO pgstage.watermarks (pipeline, source, watermark, run_id) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (pipeline, source) DO UPDATE SET watermark = greatest(pgstage.watermarks.watermark,"
        " EXCLUDED.watermark), run_id = EXCLUDED.run_id, updated_at = now()"),
        (pipeline, source, value, run_id), label="ledger: watermark")
