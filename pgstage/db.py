"""Connections and the one door every statement goes through.

Resolution order: `--db URL`, then `PGSTAGE_DATABASE_URL`, then the embedded server.
`execute()` labels, times and (with `--trace-sql`) prints every statement; psycopg errors
are wrapped once here into pgstage errors, transient ones marked for retry.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgstage import embedded
from pgstage.errors import ConnectionFailed, DatabaseError, TransientDatabaseError

MIN_SERVER_VERSION = 160000
ENV_URL = "PGSTAGE_DATABASE_URL"
TRACE = os.environ.get("PGSTAGE_TRACE_SQL") == "1"

_TRANSIENT = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.AdminShutdown,
    psycopg.errors.CannotConnectNow,
)


def mask(url: str) -> str:
    """The URL with any password replaced, for logs and reports."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "<unparseable connection string>"
    if params.get("password"):
        params["password"] = "***"
    return make_conninfo("", **params)  # type: ignore[arg-type]


def resolve_url(url: str | None) -> str:
    """The connection URL to use; starts the embedded server when nothing else is given."""
    return url or os.environ.get(ENV_URL) or embedded.start()


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """Open a connection, refuse servers older than PostgreSQL 16, pin the session to UTC."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, application_name="pgstage")
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {mask(url)}: {str(exc).strip()}",
                            hint=f"pass --db URL or set {ENV_URL}; without either pgstage starts an embedded server") from None
    if conn.info.server_version < MIN_SERVER_VERSION:
        version = conn.info.server_version
        conn.close()
        raise DatabaseError(f"{mask(url)} runs PostgreSQL {version // 10000}; pgstage needs 16 or newer "
                            "(it validates with pg_input_is_valid, new in 16)")
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


def wrap(exc: psycopg.Error, label: str) -> DatabaseError:
    """Turn a psycopg error into ours, keeping PostgreSQL's words and SQLSTATE."""
    diag = exc.diag
    parts = [f"{label}: {diag.message_primary or str(exc).strip()}"]
    if diag.message_detail:
        parts.append(diag.message_detail)
    hint = diag.message_hint
    kind = TransientDatabaseError if isinstance(exc, _TRANSIENT) or isinstance(exc, psycopg.OperationalError) else DatabaseError
    return kind(" ".join(parts) + (f" [SQLSTATE {diag.sqlstate}]" if diag.sqlstate else ""), hint=hint)


def execute(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: Sequence[Any] | dict[str, Any] | None = None,
            *, label: str) -> psycopg.Cursor[Any]:
    """Run one statement: the single door, so tracing, timing and error wrapping live in one place."""
    started = time.perf_counter()
    try:
        cursor = conn.execute(query, params)
    except psycopg.Error as exc:
        if TRACE:
            _trace(f"-- {label}\n{query.as_string(conn)};\n-- {label}: failed: {exc.diag.message_primary}")
        raise wrap(exc, label) from exc
    if TRACE:  # one write per statement: the sessions of a run's workers trace from several threads
        ended = time.perf_counter()
        _trace(f"-- {label}\n{query.as_string(conn)};\n"
               f"-- {label}: {ended - started:.3f}s, {cursor.rowcount} rows, ended at {ended - _EPOCH:.3f}s"
               f" [{threading.current_thread().name}]")
    return cursor


_EPOCH = time.perf_counter()   # trace lines tell when each statement ended, to see what overlapped


_trace_lock = threading.Lock()


def _trace(text: str) -> None:
    with _trace_lock:
        print(text, file=sys.stderr, flush=True)


@contextmanager
def transaction(conn: psycopg.Connection[Any], label: str) -> Iterator[None]:
    try:
        with conn.transaction():
            yield
    except psycopg.Error as exc:
        raise wrap(exc, label) from exc
