"""Change data capture from a PostgreSQL table by watermark (source.kind = "postgres").

Each test makes its own source database on the test server, next to the target database
`db_url`. Timestamps are fixed, not now(), so which rows the lookback window re-reads is
exact. The expected target is computed independently, from the source table in plain SQL.
"""

from __future__ import annotations

import json
import os
import random
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgstage
from pgstage.errors import SpecError
from pgstage.spec import SourceSection
from tests.conftest import Loader, assert_identity
from tests.test_crash import child_run

T0 = "2024-01-01 00:00:00+00"

SPEC = """
[pipeline]
name = "cdc"
target = "app.orders"
key = ["id"]

[source]
kind = "postgres"
url = {url}
table = "shop.orders"
inserted_at = "created_at"
updated_at = "updated_at"
{deleted}
lookback = "5 minutes"

[columns]
id         = {{ from = "id", type = "integer" }}
customer   = {{ from = "customer", type = "text" }}
amount     = {{ from = "amount", type = "numeric(10,2)", min = 0 }}
updated_at = {{ from = "updated_at", type = "timestamptz" }}

[load]
batch_rows = {batch}
"""

Query = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def source(server_url: str) -> Iterator[tuple[str, Query]]:
    """A fresh source database with `shop.orders`, and a function to run SQL in it."""
    name = f"pgstage_src_{os.getpid()}_{random.randrange(10**9)}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = make_conninfo(server_url, dbname=name)
    conn = psycopg.connect(url, autocommit=True)
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute("CREATE SCHEMA shop; CREATE TABLE shop.orders (id integer PRIMARY KEY, customer text,"
                 " amount numeric(10,2), created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL,"
                 " deleted_at timestamptz)")

    def query(text: str, params: Any = None) -> list[tuple[Any, ...]]:
        cursor = conn.execute(text, params)
        return cursor.fetchall() if cursor.description else []

    yield url, query
    conn.close()
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def seed(query: Query, n: int) -> None:
    """Rows 1..n, row i created and last updated at T0 + i minutes; customer names with quotes and newlines."""
    query("INSERT INTO shop.orders SELECT i, 'c' || i || CASE WHEN i %% 7 = 0 THEN E' \"q\",\\n;' ELSE '' END,"
          " (i %% 1000) + 0.25, %(t0)s::timestamptz + i * interval '1 minute',"
          " %(t0)s::timestamptz + i * interval '1 minute' FROM generate_series(1, %(n)s) i", {"t0": T0, "n": n})


def write_spec(loader: Loader, url: str, *, on_delete: str | None = "mark", batch: int = 1_000_000) -> Path:
    deleted = f'deleted_at = "deleted_at"\non_delete = "{on_delete}"' if on_delete else ""
    return loader.spec(SPEC.format(url=json.dumps(url), deleted=deleted, batch=batch))


def expected(query: Query, on_delete: str | None) -> dict[int, tuple[Any, ...]]:
    """The target a correct CDC load yields, from the source alone."""
    rows = query("SELECT id, customer, amount, updated_at, deleted_at FROM shop.orders")
    if on_delete == "delete":
        return {r[0]: r[:4] for r in rows if r[4] is None}
    if on_delete == "mark":
        return {r[0]: r for r in rows}
    return {r[0]: r[:4] for r in rows}


def target(sql: Query, on_delete: str | None) -> dict[int, tuple[Any, ...]]:
    extra = ", _deleted_at" if on_delete == "mark" else ""
    return {r[0]: r for r in sql(f"SELECT id, customer, amount, updated_at{extra} FROM app.orders")}


def counts(report: pgstage.RunReport) -> dict[str, int]:
    assert_identity(report)
    report.counts.check_merged()
    return {k: v for k, v in report.counts.as_dict().items() if v}


def watermark(sql: Query) -> Any:
    rows = sql("SELECT watermark FROM pgstage.watermarks WHERE pipeline = 'cdc'")
    return rows[0][0] if rows else None


@pytest.mark.parametrize("on_delete", ["mark", "delete"])
def test_inserts_updates_soft_deletes_and_lookback(loader: Loader, source, sql: Query, on_delete: str) -> None:
    url, src = source
    seed(src, 100)
    write_spec(loader, url, on_delete=on_delete)
    assert counts(loader.run()) == {"read": 100, "valid": 100, "inserted": 100}
    assert str(watermark(sql)) == "2024-01-01 01:40:00+00:00"
    assert sql("SELECT source FROM pgstage.watermarks") == [("postgres:shop.orders",)]
    assert sql("SELECT count(*) FROM pgstage.files") == [(0,)]   # never fingerprinted

    src("UPDATE shop.orders SET amount = amount + 1, updated_at = '2024-01-01 03:00:00+00'"
        " WHERE id <= 5")
    src("INSERT INTO shop.orders SELECT i, 'new', 1, %(t)s, %(t)s FROM generate_series(101, 103) i",
        {"t": "2024-01-01 03:00:01+00"})
    src("UPDATE shop.orders SET deleted_at = '2024-01-01 03:00:02+00' WHERE id IN (6, 7)")
    # Committed late, but stamped inside the lookback window: still picked up.
    src("INSERT INTO shop.orders VALUES (104, 'late', 2, %(t)s, %(t)s)", {"t": "2024-01-01 01:39:30+00"})
    # Rows 95..100 lie inside the lookback (5 minutes before 01:40): read again, unchanged.
    report = loader.run()
    assert counts(report) == {"read": 17, "valid": 17, "inserted": 4, "updated": 7, "unchanged": 6, "deleted": 2}
    assert target(sql, on_delete) == expected(src, on_delete)
    assert str(watermark(sql)) == "2024-01-01 03:00:02+00:00"

    # Nothing changed: the lookback re-reads the last rows; nothing is doubled, nothing deleted twice.
    report = loader.run()
    assert counts(report) == {"read": 10, "valid": 10, "unchanged": 10}
    assert target(sql, on_delete) == expected(src, on_delete)

    if on_delete == "mark":  # an undelete clears the mark
        src("UPDATE shop.orders SET deleted_at = NULL, updated_at = '2024-01-01 04:00:00+00' WHERE id = 6")
        assert counts(loader.run())["updated"] == 1
        assert target(sql, on_delete) == expected(src, on_delete)
        assert sql("SELECT id FROM app.orders WHERE _deleted_at IS NOT NULL") == [(7,)]


def test_deletion_of_a_row_never_loaded(loader: Loader, source, sql: Query) -> None:
    url, src = source
    seed(src, 3)
    src("UPDATE shop.orders SET deleted_at = created_at WHERE id = 3")
    write_spec(loader, url, on_delete="delete")
    assert counts(loader.run()) == {"read": 3, "valid": 3, "inserted": 2, "unchanged": 1}
    assert target(sql, "delete") == expected(src, "delete")
    write_spec(loader, url, on_delete="mark")
    sql("DROP TABLE app.orders")
    sql("DELETE FROM pgstage.watermarks")
    assert counts(loader.run()) == {"read": 3, "valid": 3, "inserted": 3, "deleted": 1}
    assert target(sql, "mark") == expected(src, "mark")


@pytest.mark.parametrize(("fault", "batch", "extra"), [
    ("validate.after:1", 20, {}),            # extracted, staged, validated: nothing merged
    ("merge.after:1", 3, {"read": 3, "valid": 3, "unchanged": 3}),   # the first of four batches merged
])
def test_killed_run_keeps_the_watermark(loader: Loader, source, sql: Query, db_url: str, fault: str, batch: int,
                                        extra: dict[str, int]) -> None:
    url, src = source
    seed(src, 50)
    write_spec(loader, url, batch=batch)
    loader.run()
    before = watermark(sql)
    src("UPDATE shop.orders SET amount = 999, updated_at = '2024-01-02 00:00:00+00' WHERE id % 10 = 0")
    src("UPDATE shop.orders SET deleted_at = '2024-01-02 00:00:01+00' WHERE id = 1")
    assert child_run(loader.root, db_url, fault) == -signal.SIGKILL
    assert watermark(sql) == before
    assert sql("SELECT count(*) FROM app.orders WHERE amount = 999") == [(0,)]
    report = loader.run()                               # resumes the same run and extracts again
    assert sql("SELECT status, attempts FROM pgstage.runs WHERE run_id = %s", (report.run_id,)) == [("succeeded", 2)]
    # 5 updates + 1 deletion + rows 45..49 inside the lookback (row 50 is updated), plus what the
    # killed attempt merged (rows 45..47 in change-time order), which stays counted
    want = {"read": 11, "valid": 11, "updated": 6, "unchanged": 5, "deleted": 1}
    assert counts(report) == {k: want.get(k, 0) + extra.get(k, 0) for k in {*want, *extra}}
    assert target(sql, "mark") == expected(src, "mark")
    assert str(watermark(sql)) == "2024-01-02 00:00:01+00:00"
    assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []


def test_incremental_run_reads_only_changed_rows(loader: Loader, source, sql: Query) -> None:
    url, src = source
    seed(src, 10_000)
    write_spec(loader, url, on_delete=None, batch=3_000)     # several batches
    assert counts(loader.run()) == {"read": 10_000, "valid": 10_000, "inserted": 10_000}
    changed = random.Random(5).sample(range(1, 9_000), 100)   # 1%, none inside the lookback
    src("UPDATE shop.orders SET customer = customer || '!', updated_at = '2024-02-01 00:00:00+00' WHERE id = ANY(%s)",
        (changed,))
    report = loader.run()
    in_lookback = 6   # updated_at from T0 + 10,000 min - 5 min: rows 9995..10000
    assert counts(report) == {"read": 100 + in_lookback, "valid": 100 + in_lookback, "updated": 100,
                              "unchanged": in_lookback}
    assert sorted(r[0] for r in sql("SELECT id FROM app.orders WHERE _run_id = %s", (report.run_id,))) == sorted(changed)
    assert target(sql, None) == expected(src, None)


def test_rejected_rows_count_and_the_watermark_still_moves(loader: Loader, source, sql: Query) -> None:
    url, src = source
    seed(src, 10)
    src("UPDATE shop.orders SET amount = -1 WHERE id = 4")
    write_spec(loader, url)
    loader.spec(SPEC.format(url=json.dumps(url), deleted="", batch=100).replace(
        "[load]", "[load]\nmax_reject_ratio = 0.5"))
    assert counts(loader.run()) == {"read": 10, "rejected": 1, "valid": 9, "inserted": 9}
    assert sql("SELECT raw->>'id' FROM pgstage.rejects") == [("4",)]
    assert str(watermark(sql)) == "2024-01-01 00:10:00+00:00"


def test_source_problems_exit_2(loader: Loader, source) -> None:
    url, src = source
    write_spec(loader, url)
    src("ALTER TABLE shop.orders RENAME COLUMN deleted_at TO removed_at")
    with pytest.raises(SpecError) as missing_column:
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert missing_column.value.exit_code == 2 and "'deleted_at' is missing" in str(missing_column.value)
    loader.spec((loader.root / "spec.toml").read_text().replace('"5 minutes"', '"5 fortnights"'))
    with pytest.raises(SpecError) as bad_lookback:
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert "'5 fortnights' is not a PostgreSQL interval" in str(bad_lookback.value)
    src("DROP TABLE shop.orders")
    with pytest.raises(SpecError) as missing_table:
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert "shop.orders does not exist" in str(missing_table.value)


def test_spec_rules_for_postgres_sources(loader: Loader) -> None:
    head = '[pipeline]\nname = "x"\ntarget = "a.b"\nkey = ["id"]\n[columns]\nid = { from = "id" }\n[source]\n'
    loader.spec(head + 'kind = "postgres"\npath = "x.csv"\n')
    with pytest.raises(SpecError) as bad:
        pgstage.load_spec(loader.root / "spec.toml")
    assert "needs table and updated_at" in str(bad.value) and bad.value.exit_code == 2
    loader.spec(head + 'kind = "postgres"\ntable = "s.t"\nupdated_at = "u"\ndelimiter = ";"\non_delete = "drop"\n')
    with pytest.raises(SpecError) as two:
        pgstage.load_spec(loader.root / "spec.toml")
    assert "source.delimiter" in str(two.value) and "source.on_delete" in str(two.value)
    loader.spec(head + 'table = "s.t"\n')
    with pytest.raises(SpecError) as csv_with_table:
        pgstage.load_spec(loader.root / "spec.toml")
    assert "source.table: applies to kind = \"postgres\" only" in str(csv_with_table.value)


def test_awkward_names_and_dry_run(loader: Loader, source, sql: Query) -> None:
    url, src = source
    src('CREATE SCHEMA "we\'ird"; CREATE TABLE "we\'ird"."ta ble" (id integer PRIMARY KEY, "ba\'z" text, ";" text,'
        ' "ü" timestamptz NOT NULL, "gone" timestamptz)')
    src('INSERT INTO "we\'ird"."ta ble" VALUES (1, \'a"b\', \'x,y\', \'2024-01-01\', NULL),'
        " (2, E'two\\nlines', NULL, '2024-01-02', '2024-01-03')")
    loader.spec(f"""
        [pipeline]
        name = "cdc"
        target = "app.awkward"
        key = ["id"]

        [source]
        kind = "postgres"
        url = {json.dumps(url)}
        table = "we'ird.ta ble"
        updated_at = "ü"
        deleted_at = "gone"
        on_delete = "delete"

        [columns]
        id = {{ from = "id", type = "integer" }}
        baz = {{ from = "ba'z", type = "text" }}
        semi = {{ from = ";", type = "text" }}
        """)
    forecast = loader.run(dry_run=True)
    assert counts(forecast) == {"read": 2, "valid": 2, "inserted": 1, "unchanged": 1}
    assert sql("SELECT count(*) FROM pgstage.watermarks") == [(0,)]
    assert counts(loader.run()) == {"read": 2, "valid": 2, "inserted": 1, "unchanged": 1}
    assert sql("SELECT id, baz, semi FROM app.awkward") == [(1, 'a"b', "x,y")]
    secret = SourceSection(kind="postgres", url="postgresql://u:sekret@h/db", table="a.b", updated_at="u")
    assert "sekret" not in repr(secret) and "sekret" not in repr(pgstage.load_spec(loader.root / "spec.toml"))
