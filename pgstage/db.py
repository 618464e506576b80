"""Connections and the one door every statement goes through.

Resolution order: `--db URL`, then `PGSTAGE_DATABASE_URL`, then the embedded server.
`execute()` labels, times and (with `PGSTAGE_TRACE_SQL=1`) prints every statement; psycopg errors
are wrapped once here into pgstage errors, transient ones (by SQLSTATE) marked for retry.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgstage import embedded
from pgstage.errors import QUERY_CANCELED, TRANSIENT_SQLSTATES, ConnectionFailed, DatabaseError, Diagnostics, TransientDatabaseError

MIN_SERVER_VERSION = 160000
ENV_URL = "PGSTAGE_DATABASE_URL"
TRACE = os.environ.get("PGSTAGE_TRACE_SQL") == "1"

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


# libpq's variable for each connection parameter dbt's profiles.yml (and psql) read.
_LIBPQ_ENV = (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER"), ("dbname", "PGDATABASE"),
              ("sslmode", "PGSSLMODE"))


def connection_env(url: str | None = None) -> dict[str, str]:
    """The libpq environment variables for a URL (resolved as every command does: `--db`,
    PGSTAGE_DATABASE_URL, else the embedded server), so dbt and psql reach the same database.

    For the embedded server PGHOST is its Unix socket directory. The password is left out on
    purpose: pgstage never prints one; a server that needs it reads PGPASSWORD set by the user.
    """
    try:
        params = conninfo_to_dict(resolve_url(url))
    except psycopg.ProgrammingError:
        raise DatabaseError("the connection string cannot be parsed",
                            hint="use postgresql://user@host:port/dbname or key=value pairs") from None
    params.setdefault("port", "5432")
    params.setdefault("dbname", params.get("user") or "postgres")
    return {var: str(params[key]) for key, var in _LIBPQ_ENV if params.get(key)}


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """Open a connection, refuse servers older than PostgreSQL 16, pin the session to UTC."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit, application_name="pgstage")
    except psycopg.OperationalError as exc:
        raise ConnectionFailed(f"cannot connect to {mask(url)}: {str(exc).strip()}",
                               hint=f"pass --db URL or set {ENV_URL}; without either pgstage starts an embedded server",
                               sqlstate=sqlstate(exc)) from None
    if conn.info.server_version < MIN_SERVER_VERSION:
        version = conn.info.server_version
        conn.close()
        raise DatabaseError(f"{mask(url)} runs PostgreSQL {version // 10000}; pgstage needs 16 or newer "
                            "(it validates with pg_input_is_valid, new in 16)")
    conn.execute("SET TIME ZONE 'UTC'")
    return conn


def sqlstate(exc: psycopg.Error) -> str | None:
    """The error's SQLSTATE: the server's, or the one its psycopg class stands for; None when libpq lost the server."""
    return exc.diag.sqlstate or getattr(type(exc), "sqlstate", None)


def is_transient(exc: psycopg.Error) -> bool:
    """Whether retrying from the last checkpoint can succeed (see TRANSIENT_SQLSTATES).

    An error without a SQLSTATE is libpq's own: the connection broke before the server
    could say anything (server killed, network cut), which is the first thing to retry.
    """
    code = sqlstate(exc)
    return code in TRANSIENT_SQLSTATES if code else isinstance(exc, psycopg.OperationalError)


def wrap(exc: psycopg.Error, label: str) -> DatabaseError:
    """Turn a psycopg error into ours, keeping PostgreSQL's words, SQLSTATE and diagnostic fields."""
    diag = exc.diag
    code = sqlstate(exc)
    parts = [f"{label}: {diag.message_primary or str(exc).strip()}"]
    if diag.message_detail:
        parts.append(diag.message_detail)
    hint = diag.message_hint
    if code == QUERY_CANCELED and "statement timeout" in (diag.message_primary or ""):
        hint = ("a statement ran longer than the session's statement_timeout: raise [load] statement_timeout"
                " in the spec (\"0\" means no limit)")
    kind = TransientDatabaseError if is_transient(exc) else DatabaseError
    return kind(" ".join(parts) + (f" [SQLSTATE {code}]" if code else ""), hint=hint, sqlstate=code,
                diagnostics=Diagnostics(message=diag.message_primary, detail=diag.message_detail,
                                        schema=diag.schema_name, table=diag.table_name, column=diag.column_name,
                                        datatype=diag.datatype_name, constraint=diag.constraint_name))


def qualified(schema: str, name: str) -> str:
    """`schema.name` as PostgreSQL reads it (each part double-quoted, inner quotes doubled).

    The one way a relation is looked up by name (`to_regclass(%s)`): joined by hand, a
    mixed-case name, or one with a space or a quote, is not found.
    """
    return sql.Identifier(schema, name).as_string()


def relation_exists(conn: psycopg.Connection[Any], schema: str, name: str) -> bool:
    row = execute(conn, sql.SQL("SELECT to_regclass(%s) IS NOT NULL"), (qualified(schema, name),),
                  label="exists").fetchone()
    return bool(row and row[0])


def roll_back_and_close(conn: psycopg.Connection[Any], tx: AbstractContextManager[Any] | None) -> bool:
    """Roll back a transaction block held open across calls (entered by hand) and close its session.

    True when it was rolled back here; False when there was none, or the session was gone, in
    which case the server rolled it back.
    """
    try:
        if tx is not None and not conn.broken:
            tx.__exit__(psycopg.Rollback, psycopg.Rollback(), None)   # rolled back, and the block closed
            return True
        return False
    except psycopg.Error:
        return False
    finally:
        conn.close()


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


def execute_many(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: Sequence[Sequence[Any]],
                 *, label: str) -> None:
    """One statement for many parameter rows (psycopg pipelines them): through the same door as execute()."""
    started = time.perf_counter()
    try:
        with conn.cursor() as cursor:
            cursor.executemany(query, params)
    except psycopg.Error as exc:
        raise wrap(exc, label) from exc
    if TRACE:
        _trace(f"-- {label}\n{query.as_string(conn)};\n-- {label}: {time.perf_counter() - started:.3f}s,"
               f" {len(params)} parameter rows [{threading.current_thread().name}]")


def copy(cursor: psycopg.Cursor[Any], statement: sql.Composed, *, label: str) -> AbstractContextManager[psycopg.Copy]:
    """Start a COPY: the door for COPY as execute() is for other statements, so tracing shows it too.

    psycopg's errors pass through unwrapped: a refused COPY is data for its caller (a window
    to screen, a record to quarantine), which wraps what it does not handle.
    """
    if TRACE:
        _trace(f"-- {label}\n{statement.as_string(cursor.connection)};\n-- {label}: started"
               f" at {time.perf_counter() - _EPOCH:.3f}s [{threading.current_thread().name}]")
    return cursor.copy(statement)


_EPOCH = time.perf_counter()   # trace lines tell when each statement ended, to see what overlapped


_trace_lock = threading.Lock()


def _trace(text: str) -> None:
    with _trace_lock:
        print(text, file=sys.stderr, flush=True)
