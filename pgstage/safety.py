"""Production safety: one run at a time per pipeline and partition; bounded waits and statements."""

from __future__ import annotations

import os
import socket
import time
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


# How long a run waits for the lock of a run whose process is gone: its server session ends
# within about CLIENT_CHECK_INTERVAL once its statement notices, but a server older than that
# setting, or a statement in a long wait, takes longer; beyond this, the run exits 4 as usual.
ORPHAN_WAIT_S = 30.0
CLIENT_CHECK_INTERVAL = "1s"
_POLL_S = 0.2


@contextmanager
def pipeline_lock(conn: psycopg.Connection[Any], pipeline: str, partition: str | None) -> Iterator[None]:
    """A session-level advisory lock: it vanishes with the session if the process is killed.

    When the run holding it was started by a process of this host that no longer exists (killed
    by the OOM killer, say), its session is ending: wait for it, up to ORPHAN_WAIT_S.
    """
    key = lock_key(pipeline, partition)
    if not _try_lock(conn, key):
        holder = execute(conn, sql.SQL(
            "SELECT run_id, started_at, host, pid FROM pgstage.runs WHERE pipeline = %s"
            " AND partition IS NOT DISTINCT FROM %s AND status = 'running' ORDER BY run_id DESC LIMIT 1"),
            (pipeline, partition), label="lock: holder").fetchone()
        orphaned = holder is not None and _process_gone(holder[2], holder[3])
        if not (orphaned and _wait_for_lock(conn, key, ORPHAN_WAIT_S)):
            who = f"run {holder[0]} (started {holder[1]:%Y-%m-%d %H:%M:%S} UTC)" if holder else "another session"
            gone = (f"; its process {holder[3]} on {holder[2]} is gone but its database session did not end"
                    f" within {ORPHAN_WAIT_S:g} s" if orphaned and holder else "")
            raise PipelineLocked(f"pipeline {pipeline!r}" + (f" partition {partition}" if partition else "")
                                 + f" is being loaded by {who}{gone}",
                                 hint=("end that session with pg_terminate_backend() (see pg_stat_activity)" if gone
                                       else "wait for it to finish, or check `pgstage runs`"))
    try:
        yield
    finally:
        if not conn.closed:
            execute(conn, sql.SQL("SELECT pg_advisory_unlock(hashtextextended(%s, 0))"), (key,), label="unlock")


def _try_lock(conn: psycopg.Connection[Any], key: str) -> bool:
    got = execute(conn, sql.SQL("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"), (key,),
                  label="lock").fetchone()
    return bool(got and got[0])


def _process_gone(host: str | None, pid: int | None) -> bool:
    """Whether the ledger's process is certainly dead: only a process of this host can be checked."""
    if host != socket.gethostname() or not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:   # alive, another user's
        return False
    return False


def _wait_for_lock(conn: psycopg.Connection[Any], key: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(_POLL_S)
        if _try_lock(conn, key):
            return True
    return False


def apply_session_settings(conn: psycopg.Connection[Any], load: LoadSection) -> None:
    """Bounded waits and enough sort memory for the load's own session.

    Never wait long for a lock, never hold one idle: a load must not stall production traffic;
    never outlive the client (`client_connection_check_interval`).
    `work_mem` lets the dedup sort and the classification join of a batch stay in memory
    instead of spilling to disk; JIT is off because compiling the large validation
    expressions costs more than it saves on batches of this size.
    """
    settings = {name: getattr(load, name).replace(" ", "") for name in
                ("lock_timeout", "statement_timeout", "idle_in_transaction_session_timeout", "work_mem")}
    settings["jit"] = "off"
    # A backend whose client was killed stops at its statement's next check instead of running
    # it to the end while it holds the pipeline's lock and its rows (PostgreSQL >= 14).
    settings["client_connection_check_interval"] = CLIENT_CHECK_INTERVAL
    # One round trip for all of them: a backfill pays this once a unit, on every session.
    execute(conn, session_settings_query(len(settings)), [v for pair in settings.items() for v in pair],
            label="session: settings")


def session_settings_query(count: int) -> sql.Composed:
    """`SELECT set_config(name, value, false), ...` for `count` (name, value) parameter pairs."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join([sql.SQL("set_config(%s, %s, false)")] * count))
