"""`ledger.ensure` on a current ledger is one query; older, foreign-stamped or damaged ledgers still get every step
(issue #18: the round trips of a run that loads nothing)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Callable

import psycopg
import pytest

from pgstage import db
from pgstage.pipeline import ledger
from pgstage.pipeline._functions import INSTALL
from tests.test_smoke import oldest_ledger

Sql = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as session:
        yield session


@pytest.fixture
def labels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The label of every statement the ledger sends (each still runs, through pgstage.db.execute)."""
    sent: list[str] = []

    def counted(conn: psycopg.Connection[Any], query: Any, params: Any = None, *, label: str) -> psycopg.Cursor[Any]:
        sent.append(label)
        return db.execute(conn, query, params, label=label)

    monkeypatch.setattr(ledger, "execute", counted)
    return sent


def stamp(sql: Sql) -> str | None:
    rows = sql("SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'pgstage'")
    return rows[0][0] if rows else None


def tables(sql: Sql) -> list[str]:
    return [r[0] for r in sql("SELECT relname FROM pg_class WHERE relnamespace = 'pgstage'::regnamespace"
                              " AND relkind = 'r' ORDER BY relname")]


ALL_TABLES = sorted(["alerts", "batches", "chunks", "files", "index_rebuilds", "pauses", "rejects", "runs", "watermarks"])


def test_a_new_ledger_is_created_and_stamped_then_checked_in_one_query(conn: psycopg.Connection[Any], sql: Sql,
                                                                        labels: list[str]) -> None:
    assert not ledger.current(conn)   # no schema at all: no row
    labels.clear()
    ledger.ensure(conn)
    assert labels[0] == "ledger: current?" and labels[-1] == "ledger: stamp"
    # (a new ledger gets its later columns by upgrades)
    assert labels.count("ledger: ddl") == 10 and labels.count("ledger: upgrade?") == 14
    assert stamp(sql) == ledger.STAMP and ledger.STAMP.startswith("pgstage ledger ")
    assert tables(sql) == ALL_TABLES
    labels.clear()
    ledger.ensure(conn)
    ledger.ensure(conn)
    assert labels == ["ledger: current?", "ledger: current?"]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE   # no transaction left open


def test_an_earlier_ledger_without_a_stamp_is_upgraded_then_current(conn: psycopg.Connection[Any], sql: Sql,
                                                                    labels: list[str]) -> None:
    """A ledger made before the stamp existed (here: the oldest shape, two tables with a foreign key)."""
    oldest_ledger(sql)
    sql("INSERT INTO pgstage.runs (pipeline, target, status) VALUES ('old', 'public.t', 'succeeded')")
    assert not ledger.current(conn)
    ledger.ensure(conn)
    assert "ledger: upgrade" in labels and labels[-1] == "ledger: stamp"
    assert ledger.current(conn) and stamp(sql) == ledger.STAMP
    assert tables(sql) == ALL_TABLES
    assert sql("SELECT pipeline, attempts, dry_run FROM pgstage.runs") == [("old", 1, False)]   # kept, upgraded
    assert sql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'pgstage.rejects'::regclass AND contype = 'f'") == [(0,)]


def test_a_ledger_stamped_by_another_version_goes_through_every_step(conn: psycopg.Connection[Any], sql: Sql,
                                                                     labels: list[str]) -> None:
    ledger.ensure(conn)
    sql("COMMENT ON SCHEMA pgstage IS 'pgstage ledger 0000000000000000'")
    labels.clear()
    ledger.ensure(conn)
    assert labels.count("ledger: ddl") == 10 and labels.count("ledger: upgrade?") == 14 and labels[-1] == "ledger: stamp"
    assert stamp(sql) == ledger.STAMP


@pytest.mark.parametrize("damage", ["DROP TABLE pgstage.chunks", "DROP FUNCTION pgstage.try_to_timestamp(text, text)"])
def test_a_stamped_ledger_missing_a_table_or_function_is_repaired(conn: psycopg.Connection[Any], sql: Sql,
                                                                  damage: str) -> None:
    ledger.ensure(conn)
    sql(damage)
    assert stamp(sql) == ledger.STAMP and not ledger.current(conn)
    ledger.ensure(conn)
    assert ledger.current(conn)
    assert tables(sql) == ALL_TABLES
    assert sql("SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgstage'::regnamespace"
               " AND proname IN ('fence', 'try_to_timestamp')") == [(2,)]


def test_the_check_does_not_wait_for_a_session_writing_to_the_ledger(conn: psycopg.Connection[Any], db_url: str,
                                                                     labels: list[str]) -> None:
    """A run writing rejects holds ROW EXCLUSIVE on pgstage.rejects; the check takes no lock on the ledger's tables."""
    ledger.ensure(conn)
    conn.execute("SET lock_timeout = '1s'")
    with psycopg.connect(db_url) as other:
        other.execute("LOCK TABLE pgstage.rejects IN ACCESS EXCLUSIVE MODE")
        labels.clear()
        ledger.ensure(conn)
    assert labels == ["ledger: current?"]


def test_the_stamp_changes_with_what_ensure_makes() -> None:
    """Derived from the DDL, the upgrades and the functions: a new column in a new version is a new stamp."""
    assert ledger.stamp_of(ledger._DDL, ledger._UPGRADES, INSTALL) == ledger.STAMP
    newer = [*ledger._UPGRADES, ("SELECT true", "ALTER TABLE pgstage.runs ADD COLUMN IF NOT EXISTS note text")]
    assert ledger.stamp_of(ledger._DDL, newer, INSTALL) != ledger.STAMP
    assert ledger.stamp_of(ledger._DDL, ledger._UPGRADES, INSTALL[:1]) != ledger.STAMP
    assert ledger._TABLES == ("runs", "files", "rejects", "batches", "index_rebuilds", "watermarks", "alerts",
                              "pauses", "chunks")
    assert ledger._FUNCTIONS == ("fence", "try_to_timestamp")
    assert ledger.build_current().as_string() == (
        "SELECT obj_description(n.oid, 'pg_namespace') = %(stamp)s"
        " AND (SELECT count(*) FROM pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'r'"
        "      AND c.relname = ANY(%(tables)s)) = %(table_count)s"
        " AND (SELECT count(DISTINCT p.proname) FROM pg_proc p WHERE p.pronamespace = n.oid"
        "      AND p.proname = ANY(%(functions)s)) = %(function_count)s"
        " FROM pg_namespace n WHERE n.nspname = %(schema)s")
