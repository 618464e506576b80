"""A backfill's remembered catalog facts (pgstage/resolved.py): reused only while no DDL touched them.

The fingerprint must change with every kind of DDL that could change what a run decides
(columns, types, key index, the table itself, a referenced table, a type of the spec) and
stay put for what only changes data (inserts, VACUUM, ANALYZE). A unit run after such DDL
sees the new definition: it loads into a compatibly altered target, and fails with exit 2,
saying why, when the target no longer matches the spec — never merges by stale facts.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage import resolved
from pgstage.backfill import Progress
from pgstage.db import connect
from pgstage.pipeline import stage
from pgstage.spec import load_spec
from tests.conftest import assert_identity

START = date(2024, 5, 1)
SPEC = """
[pipeline]
name = "orders"
target = "app.orders"
key = ["id"]
strategy = "upsert"

[source]
path = "data/orders_{date}.csv"

[columns]
id = { from = "id", type = "bigint", required = true }
amount = { from = "amount", type = "bigint", required = true }
customer = { from = "customer", type = "bigint", references = "app.customers(id)" }
"""


def days(root: Path, n: int) -> list[date]:
    """n daily files: day i holds ids 10i+1..10i+3, and id 1 again with amount i (a later day wins)."""
    (root / "data").mkdir(exist_ok=True)
    out = []
    for i in range(n):
        day = START + timedelta(days=i)
        rows = [(10 * i + k, 100 * i + k, 7) for k in (1, 2, 3)] + [(1, i, 7)]
        (root / "data" / f"orders_{day.isoformat()}.csv").write_text(
            "id,amount,customer\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
        out.append(day)
    return out


@pytest.fixture
def setup(tmp_path: Path, sql: Callable[..., list[tuple[Any, ...]]]) -> Path:
    sql("CREATE SCHEMA app")
    sql("CREATE TABLE app.customers (id bigint PRIMARY KEY)")
    sql("INSERT INTO app.customers VALUES (7)")
    (tmp_path / "orders.toml").write_text(textwrap.dedent(SPEC))
    return tmp_path / "orders.toml"


def test_snapshot_changes_with_ddl_and_not_with_data(setup: Path, db_url: str,
                                                     sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    spec = load_spec(setup)
    sql("CREATE TABLE app.orders (id bigint PRIMARY KEY, amount bigint, customer bigint)")
    with connect(db_url) as conn:
        seen = [resolved.snapshot(conn, spec)]

        def after(statement: str) -> str:
            sql(statement)
            seen.append(resolved.snapshot(conn, spec))
            return seen[-1]

        # Data only: the same fingerprint.
        assert after("INSERT INTO app.orders SELECT g, g, 7 FROM generate_series(1, 1000) g") == seen[0]
        assert after("VACUUM ANALYZE app.orders") == seen[0]
        assert after("ANALYZE app.customers") == seen[0]
        assert after("UPDATE app.orders SET amount = amount + 1") == seen[0]
        # Every DDL that could change a decision: a new fingerprint each time.
        for ddl in ("ALTER TABLE app.orders ADD COLUMN note text",
                    "ALTER TABLE app.orders DROP COLUMN note",
                    "ALTER TABLE app.orders ALTER COLUMN amount TYPE numeric",
                    "ALTER TABLE app.orders RENAME COLUMN amount TO total",
                    "ALTER TABLE app.orders RENAME COLUMN total TO amount",
                    "ALTER TABLE app.orders ALTER COLUMN amount SET NOT NULL",
                    "CREATE INDEX orders_amount ON app.orders (amount)",
                    "DROP INDEX app.orders_amount",
                    "ALTER TABLE app.orders DROP CONSTRAINT orders_pkey",
                    "CREATE UNIQUE INDEX orders_id ON app.orders (id)",
                    "ALTER TABLE app.customers ADD COLUMN name text",
                    "DROP TABLE app.orders",
                    "CREATE TABLE app.orders (id bigint PRIMARY KEY, amount bigint, customer bigint)"):
            before = seen[-1]
            assert after(ddl) != before, ddl
        # The session's search_path decides how type and table names resolve.
        before = resolved.snapshot(conn, spec)
        conn.execute("SET search_path = app, public")
        assert resolved.snapshot(conn, spec) != before


def test_a_memo_is_reused_until_ddl_and_the_results_equal_lone_runs(setup: Path, db_url: str,
                                                                      sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    spec = load_spec(setup)
    memo = resolved.Memo()
    dates = days(setup.parent, 5)
    with connect(db_url) as session:
        reports = [pgstage.run(spec, partition=d, db=db_url, conn=session, memo=memo) for d in dates[:3]]
        # Day 1 created the target after its fingerprint was taken: day 2 read again, day 3 reused it.
        assert (memo.misses, memo.hits) == (2, 1)
        sql("ALTER TABLE app.orders ADD COLUMN note text DEFAULT 'kept'")   # compatible: the unit loads into it
        reports.append(pgstage.run(spec, partition=dates[3], db=db_url, conn=session, memo=memo))
        assert (memo.misses, memo.hits) == (3, 1)
        assert memo.resolved is not None and memo.resolved.found is not None and "note" in memo.resolved.found
        reports.append(pgstage.run(spec, partition=dates[4], db=db_url, conn=session, memo=memo))
        assert (memo.misses, memo.hits) == (3, 2)
    for report in reports:
        assert_identity(report)
        assert report.status == "succeeded"
    # Day 1 repeats id 1 in its own file (the later record wins); every later day updates id 1.
    assert [(r.counts.inserted, r.counts.updated, r.counts.duplicate) for r in reports] == [(3, 0, 1)] + [(3, 1, 0)] * 4
    rows = sql("SELECT id, amount, note FROM app.orders ORDER BY id")
    expected = {1: (4, "kept")}
    for i in range(5):
        for k in (1, 2, 3):
            expected.setdefault(10 * i + k, (100 * i + k, "kept"))
    assert rows == [(i, a, n) for i, (a, n) in sorted(expected.items())]


@pytest.mark.parametrize(("ddl", "message"), [
    ("ALTER TABLE app.orders ALTER COLUMN amount TYPE numeric",
     "column 'amount': spec says bigint, table has numeric"),
    ("ALTER TABLE app.orders RENAME COLUMN amount TO total", "column 'amount' is missing (spec type bigint)"),
    ("ALTER TABLE app.orders DROP CONSTRAINT orders_pkey", "no primary key or unique index on the key (id)"),
    ("ALTER TABLE app.customers RENAME COLUMN id TO customer_id",
     "columns.customer.references: app.customers has no column 'id'"),
])
def test_ddl_between_units_of_a_backfill_fails_the_next_units_clearly(
        setup: Path, db_url: str, sql: Callable[..., list[tuple[Any, ...]]], ddl: str, message: str) -> None:
    """The DDL lands after day 2 (the memo was reused by then): days 3 and 4 fail with exit 2, load nothing."""
    dates = days(setup.parent, 4)
    altered: list[tuple[Any, ...]] = []

    def alter(progress: Progress) -> None:   # runs in the job's thread, between two units
        if progress.done == 2 and not altered:
            sql(ddl)
            altered.append(sql("SELECT count(*), max(_run_id) FROM app.orders")[0])

    report = pgstage.backfill([setup], start=dates[0], end=dates[-1], db=db_url, on_progress=alter)
    assert report.units == {"pending": 0, "succeeded": 2, "skipped": 0, "failed": 2}
    assert [(f["partition"], f["exit_code"]) for f in report.failures] == [(d.isoformat(), 2) for d in dates[2:]]
    for failure in report.failures:
        assert message in failure["message"], failure["message"]
    # Nothing of days 3 and 4 reached the target.
    assert sql("SELECT count(*), max(_run_id) FROM app.orders")[0] == altered[0]
    assert (report.counts.read, report.counts.inserted, report.counts.updated, report.counts.duplicate) == (8, 6, 1, 1)


def test_drop_takes_several_scratch_tables_and_their_sequences_in_one_statement(db_url: str) -> None:
    assert stage.build_drop(["_stg_1_0_0", "_chk_1_0_0"]).as_string() == (
        'DROP TABLE IF EXISTS "pgstage"."_stg_1_0_0", "pgstage"."_chk_1_0_0";'
        ' DROP SEQUENCE IF EXISTS "pgstage"."_stg_1_0_0_rec", "pgstage"."_chk_1_0_0_rec"')
    with connect(db_url) as conn:
        conn.execute("CREATE SCHEMA pgstage")
        conn.execute("CREATE SEQUENCE pgstage._stg_1_0_0_rec")
        conn.execute("CREATE TABLE pgstage._stg_1_0_0 (_rec bigint DEFAULT nextval('pgstage._stg_1_0_0_rec'))")
        conn.execute("CREATE TABLE pgstage._chk_1_0_0 (_rec bigint)")
        conn.execute("CREATE TABLE pgstage._stg_2_0_0 (_rec bigint)")   # not named: stays
        stage.drop(conn)   # nothing to drop: no statement
        stage.drop(conn, "_stg_1_0_0", "_chk_1_0_0")
        left = conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'pgstage'::regnamespace"
                            " ORDER BY relname").fetchall()
    assert left == [("_stg_2_0_0",)]


def test_a_lone_run_takes_no_fingerprint(setup: Path, db_url: str,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a memo nothing is remembered: `pgstage run` asks the catalog as it always did."""
    days(setup.parent, 1)
    calls: list[str] = []
    real = resolved.snapshot

    def counted(conn: psycopg.Connection[Any], spec: Any) -> str:
        calls.append("snapshot")
        return real(conn, spec)

    monkeypatch.setattr(resolved, "snapshot", counted)
    report = pgstage.run(setup, partition=START, db=db_url)
    assert report.status == "succeeded" and report.counts.inserted == 3
    assert calls == []
