"""Production safety: one run at a time per pipeline and partition; bounded waits and statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import PipelineLocked
from pgstage.spec import LoadSection


def lock_key(pipeline: str, partition: str | None) -> str:
    return f"pgstage:{pipeline}:{partition or ''}"


@contextmanager
def pipeline_lock(conn: psycopg.Connection[Any], pipeline: str, partition: str | None) -> Iterator[None]:
    """A session-level advisory lock: it vanishes with the session if the process is killed."""
    key = lock_key(pipeline, partition)
    got = execute(conn, sql.SQL("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"), (key,),
                  label="lock").fetchone()
    if not (got and got[0]):
        holder = execute(conn, sql.SQL(
            "SELECT run_id, started_at FROM pgstage.runs WHERE pipeline = %s AND partition IS NOT DISTINCT FROM %s"
            " AND status = 'running' ORDER BY run_id DESC LIMIT 1"), (pipeline, partition), label="lock: holder").fetchone()
        who = f"run {holder[0]} (started {holder[1]:%Y-%m-%d %H:%M:%S} UTC)" if holder else "another session"
        raise PipelineLocked(f"pipeline {pipeline!r}" + (f" partition {partition}" if partition else "")
                             + f" is being loaded by {who}", hint="wait for it to finish, or check `pgstage runs`")
    try:
        yield
    finally:
        if not conn.closed:
            execute(conn, sql.SQL("SELECT pg_advisory_unlock(hashtextextended(%s, 0))"), (key,), label="unlock")


def apply_session_settings(conn: psycopg.Connection[Any], load: LoadSection) -> None:
    """Bounded waits and enough sort memory for the load's own session.

    Never wait long for a lock, never hold one idle: a load must not stall production traffic.
    `work_mem` lets the dedup sort and the classification join of a batch stay in memory
    instead of spilling to disk; JIT is off because compiling the large validation
    expressions costs more than it saves on batches of this size.
    """
    settings = {name: getattr(load, name).replace(" ", "") for name in
                ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "work_mem")}
    settings["jit"] = "off"
    for name, value in settings.items():
        execute(conn, sql.SQL("SELECT set_config(%s, %s, false)"), (name, value), label=f"session: {name}")
