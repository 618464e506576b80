"""Which database faults a run retries: an explicit SQLSTATE list, checked against a real server."""

from __future__ import annotations

import psycopg
import pytest

from pgstage import db
from pgstage.errors import TRANSIENT_SQLSTATES, DatabaseError, TransientDatabaseError
from tests import specs
from tests.conftest import Loader

SPEC = specs.template(name="retries", target="app.items", path="items.csv", columns=specs.NOTES, strategy=None,
                      load='max_retries = 3\nlock_timeout = "30s"\nstatement_timeout = "300ms"')


@pytest.mark.parametrize("error, transient", [
    (psycopg.errors.SerializationFailure, True),
    (psycopg.errors.DeadlockDetected, True),
    (psycopg.errors.LockNotAvailable, True),
    (psycopg.errors.AdminShutdown, True),
    (psycopg.errors.CrashShutdown, True),
    (psycopg.errors.CannotConnectNow, True),
    (psycopg.errors.TooManyConnections, True),
    (psycopg.errors.ConnectionFailure, True),
    (psycopg.errors.QueryCanceled, False),         # statement_timeout: would time out again
    (psycopg.errors.DiskFull, False),
    (psycopg.errors.OutOfMemory, False),
    (psycopg.errors.ProgramLimitExceeded, False),
    (psycopg.errors.InsufficientResources, False),
    (psycopg.errors.UniqueViolation, False),
])
def test_only_the_listed_sqlstates_are_transient(error: type[psycopg.Error], transient: bool) -> None:
    wrapped = db.wrap(error("boom"), "merge")
    assert isinstance(wrapped, TransientDatabaseError) is transient
    assert wrapped.sqlstate == error.sqlstate
    assert (wrapped.sqlstate in TRANSIENT_SQLSTATES) is transient


def test_a_lost_connection_without_sqlstate_is_transient() -> None:
    """libpq's own errors (the server went away before answering) carry no SQLSTATE."""
    wrapped = db.wrap(psycopg.OperationalError("server closed the connection unexpectedly"), "merge")
    assert isinstance(wrapped, TransientDatabaseError) and wrapped.sqlstate is None


def test_a_server_error_keeps_its_sqlstate_and_diagnostics(db_url: str) -> None:
    with db.connect(db_url) as conn:
        db.execute(conn, psycopg.sql.SQL("CREATE TABLE t (id int PRIMARY KEY)"), label="setup")
        db.execute(conn, psycopg.sql.SQL("INSERT INTO t VALUES (1)"), label="setup")
        with pytest.raises(DatabaseError) as caught:
            db.execute(conn, psycopg.sql.SQL("INSERT INTO t VALUES (1)"), label="insert")
    exc = caught.value
    assert not isinstance(exc, TransientDatabaseError)
    assert (exc.sqlstate, exc.sqlstate_class) == ("23505", "23")
    assert exc.diagnostics.table == "t" and exc.diagnostics.constraint == "t_pkey"
    assert exc.diagnostics.message == 'duplicate key value violates unique constraint "t_pkey"'
    assert exc.diagnostics.detail == "Key (id)=(1) already exists."


def test_a_statement_timeout_fails_after_one_attempt_and_names_the_setting(loader: Loader, sql, db_url: str) -> None:
    """Another session holds the target locked: the merge waits past statement_timeout (not lock_timeout)."""
    loader.spec(SPEC.format())
    loader.write("items.csv", "id,note\n1,a\n2,b\n")
    loader.run()
    loader.write("items.csv", "id,note\n1,a\n2,c\n3,d\n")
    with psycopg.connect(db_url) as holder:
        holder.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(DatabaseError) as caught:
            loader.run()
        holder.rollback()
    exc = caught.value
    assert not isinstance(exc, TransientDatabaseError)
    assert exc.sqlstate == "57014"
    assert "canceling statement due to statement timeout" in exc.message
    assert exc.hint is not None and "[load] statement_timeout" in exc.hint
    status, attempts, message = sql("SELECT status, attempts, message FROM pgstage.runs ORDER BY run_id DESC LIMIT 1")[0]
    assert (status, attempts) == ("failed", 1)
    assert "statement timeout" in message and "[load] statement_timeout" in message
    # Nothing of the second load was merged.
    assert sql("SELECT id, note FROM app.items ORDER BY id") == [(1, "a"), (2, "b")]


def test_a_lock_timeout_is_retried_then_the_run_is_marked_failed(loader: Loader, sql, db_url: str) -> None:
    """55P03 is transient: retried max_retries times, each attempt resuming the run; then `failed`, with why."""
    loader.spec(SPEC.format().replace('lock_timeout = "30s"\nstatement_timeout = "300ms"',
                                      'lock_timeout = "200ms"').replace("max_retries = 3", "max_retries = 1"))
    loader.write("items.csv", "id,note\n1,a\n")
    loader.run()
    loader.write("items.csv", "id,note\n1,a\n2,b\n")
    with psycopg.connect(db_url) as holder:
        holder.execute("LOCK TABLE app.items IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(TransientDatabaseError) as caught:
            loader.run()
        holder.rollback()
    assert caught.value.sqlstate == "55P03"
    status, attempts, message = sql("SELECT status, attempts, message FROM pgstage.runs ORDER BY run_id DESC LIMIT 1")[0]
    assert (status, attempts) == ("failed", 2)
    assert message.startswith("gave up after 1 retries: ") and "lock timeout" in message
    report = loader.run()   # the next run resumes it
    assert report.counts.as_dict() == {"read": 2, "rejected": 0, "valid": 2, "duplicate": 0, "inserted": 1,
                                       "updated": 0, "unchanged": 1, "stale": 0, "deleted": 0}
    assert sql("SELECT id, note FROM app.items ORDER BY id") == [(1, "a"), (2, "b")]
