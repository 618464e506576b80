"""`pgstage migrate`: each kind of change on a populated target, crash-resumed, rolled back, under a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from pgstage import migrate
from pgstage.cli.migrate import render
from pgstage.errors import MigrationFailed, TargetMismatch
from tests.conftest import Loader

ROWS = 100_000
TARGET = 'm."Orders"'
V1 = """
[pipeline]
name = "orders"
target = 'm.Orders'
key = ["id"]

[source]
path = "orders.csv"

[columns]
id = { from = "id", type = "bigint" }
qty = { from = "qty", type = "integer" }
note = { from = "note", type = "varchar(20)" }
amount = { from = "amount", type = "numeric(10,2)" }
email = { from = "email", type = "text" }
legacy = { from = "legacy", type = "text" }

[load]
raw_column = "_raw"
lock_timeout = "2s"
"""
V2 = """
[pipeline]
name = "orders"
target = 'm.Orders'
key = ["id"]

[source]
path = "orders.csv"

[columns]
id = { from = "id", type = "bigint" }
qty = { from = "qty", type = "bigint" }
note = { from = "note", type = "text" }
amount = { from = "amount", type = "numeric(14,2)" }
customer_email = { from = "email", type = "text", renamed_from = "email" }
region = { from = "Region", type = "text", normalize = ["trim", "upper"], map = { "NORTH" = "N" } }
channel = { const = "web", type = "text", required = true }

[indexes]
by_region = { columns = ["region", "id desc"], where = "region is not null" }

[load]
raw_column = "_raw"
lock_timeout = "2s"
"""
REGIONS = [" north ", "south", "", "east "]


def region_of(i: int) -> str | None:
    """The expected region of row i: its raw field trimmed, upper-cased, mapped; '' is NULL."""
    text = REGIONS[i % 4].strip().upper()
    return {"NORTH": "N"}.get(text, text) or None


@pytest.fixture
def populated(loader: Loader, sql) -> Loader:
    """A v1 target of ROWS rows: created by a run, filled in bulk by SQL (the test is about migrate)."""
    loader.spec(V1)
    loader.write("orders.csv", "id,qty,note,amount,email,legacy\n0,1,n,1.50,a@x,old\n")
    loader.run()
    sql(f"INSERT INTO {TARGET} (id, qty, note, amount, email, legacy, _raw, _run_id)"
        " SELECT i, i % 1000, 'note ' || i, (i % 500) + 0.25, 'u' || i || '@x', 'l' || i,"
        "  jsonb_build_object('id', i::text, 'Region', (ARRAY[' north ', 'south', '', 'east '])[i % 4 + 1]), 1"
        f" FROM generate_series(1, {ROWS - 1}) i")
    sql(f"UPDATE {TARGET} SET _raw = _raw || '{{\"Region\": \" north \"}}' WHERE id = 0")
    sql(f"ANALYZE {TARGET}")
    loader.spec(V2)
    return loader


def shape(sql) -> list[tuple[str, str, bool]]:
    return sql("SELECT attname, format_type(atttypid, atttypmod), attnotnull FROM pg_attribute"
               f" WHERE attrelid = '{TARGET}'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attname")


def test_plan_lists_every_kind_with_sql_lock_and_rows(populated: Loader, sql) -> None:
    before = shape(sql)
    plan = migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    kinds = [(c.kind, c.subject) for c in plan.changes]
    assert kinds == [("widen_type", "qty"), ("widen_type", "note"), ("widen_type", "amount"),
                     ("rename_column", "customer_email"), ("add_column", "region"), ("add_column", "channel"),
                     ("removed_column", "legacy"), ("add_index", "by_region")]
    text = render(plan)
    assert 'ALTER TABLE "m"."Orders" ALTER COLUMN "note" TYPE text' in text
    assert 'CREATE INDEX CONCURRENTLY IF NOT EXISTS "by_region" ON "m"."Orders" ("region", "id" DESC)' \
           ' WHERE "region" IS NOT NULL' in text
    assert "kept: pgstage never drops a column unless asked (--drop-removed)" in text
    assert shape(sql) == before     # the plan wrote nothing


def test_apply_brings_the_target_to_the_spec(populated: Loader, sql) -> None:
    report = migrate.apply(populated.root / "spec.toml", db=populated.db_url, batch_rows=20_000)
    assert (report.rows_before, report.rows_after) == (ROWS, ROWS)
    assert shape(sql) == [
        ("_loaded_at", "timestamp with time zone", True), ("_raw", "jsonb", False),
        ("_row_hash", "bigint", False), ("_run_id", "bigint", False),
        ("_updated_at", "timestamp with time zone", True), ("amount", "numeric(14,2)", False),
        ("channel", "text", True), ("customer_email", "text", False), ("id", "bigint", True),
        ("legacy", "text", False), ("note", "text", False), ("qty", "bigint", False), ("region", "text", False)]
    rows = sql(f"SELECT id, qty, note, amount::text, customer_email, region, channel FROM {TARGET} ORDER BY id")
    expected = [(0, 1, "n", "1.50", "a@x", "N", "web")] + [
        (i, i % 1000, f"note {i}", f"{i % 500}.25", f"u{i}@x", region_of(i), "web") for i in range(1, ROWS)]
    assert rows == expected
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'm.by_region'::regclass") == [(True,)]
    assert sql("SELECT kind, subject, status, steps_done FROM pgstage.migrations ORDER BY migration_id") == [
        ("widen_type", "qty", "applied", 4), ("widen_type", "note", "applied", 1),
        ("widen_type", "amount", "applied", 1), ("rename_column", "customer_email", "applied", 1),
        ("add_column", "region", "applied", 2), ("add_column", "channel", "applied", 6),
        ("add_index", "by_region", "applied", 1)]
    again = migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    assert [(c.kind, c.subject) for c in again.changes] == [("removed_column", "legacy")]
    # the migrated target loads as before
    populated.write("orders.csv", "id,qty,note,amount,email,Region\n0,7,n,1.50,a@x,south\n")
    run = populated.run(force=True)
    assert (run.counts.updated, run.counts.inserted) == (1, 0)
    assert sql(f"SELECT qty, region, channel FROM {TARGET} WHERE id = 0") == [(7, "SOUTH", "web")]


def child_apply(loader: Loader, fault: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "pgstage.cli", "migrate", str(loader.root / "spec.toml"), "--apply",
                           "--db", loader.db_url, *extra], env=env, capture_output=True, text=True, timeout=600)


def test_kill_9_during_a_batched_backfill_then_rerun(populated: Loader, sql) -> None:
    killed = child_apply(populated, "migrate.batch:3", "--batch-rows", "20000")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    # killed inside the copy of qty, after its third batch committed with its progress
    assert sql("SELECT migration_id, kind, subject, status, steps_done, rows_written > 0 FROM pgstage.migrations") == [
        (1, "widen_type", "qty", "running", 2, True)]
    plan = migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    assert (plan.changes[0].migration_id, plan.changes[0].resumed_at) == (1, 2)
    assert "(resumes migration 1)" in render(plan) and "[done]" in render(plan)
    migrate.apply(populated.root / "spec.toml", db=populated.db_url, batch_rows=20_000)
    # every row copied exactly once across the kill, each batch counted with its commit
    assert sql("SELECT subject, status, rows_written FROM pgstage.migrations WHERE subject IN ('qty', 'region')"
               " ORDER BY migration_id") == [("qty", "applied", ROWS), ("region", "applied", ROWS * 3 // 4)]
    assert sql(f"SELECT count(*), sum(qty), count(region), count(channel) FROM {TARGET}") == [
        (ROWS, 1 + sum(i % 1000 for i in range(1, ROWS)), ROWS * 3 // 4, ROWS)]
    assert sql(f"SELECT id, region FROM {TARGET} WHERE id < 6 ORDER BY id") == [
        (0, "N"), (1, "SOUTH"), (2, None), (3, "EAST"), (4, "N"), (5, "SOUTH")]
    assert sql("SELECT count(*) FROM pg_attribute WHERE attrelid = 'm.\"Orders\"'::regclass"
               " AND attname LIKE '\\_pgstage\\_%' AND NOT attisdropped") == [(0,)]
    assert sql(f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{TARGET}'::regclass") == [(0,)]


def test_rollback_restores_the_previous_shape(populated: Loader, sql) -> None:
    before = shape(sql)
    values = sql(f"SELECT id, note, amount, email FROM {TARGET} ORDER BY id")
    migrate.apply(populated.root / "spec.toml", db=populated.db_url, batch_rows=50_000)
    ids = [i for (i,) in sql("SELECT migration_id FROM pgstage.migrations ORDER BY migration_id DESC")]
    refused = []
    for migration_id in ids:
        try:
            migrate.rollback(populated.root / "spec.toml", migration_id, db=populated.db_url)
        except MigrationFailed as exc:
            refused.append((migration_id, str(exc)))
    assert refused == [(1, "migration 1 (column 'qty' integer -> bigint (copy and swap)) cannot be undone:"
                           " the swap drops the old column")]
    assert shape(sql) == [(n, "bigint" if n == "qty" else t, nn) for n, t, nn in before]
    assert sql(f"SELECT id, note, amount, email FROM {TARGET} ORDER BY id") == values
    assert sql(f"SELECT count(*) FROM pg_index WHERE indrelid = '{TARGET}'::regclass") == [(1,)]
    assert sql("SELECT status, count(*) FROM pgstage.migrations GROUP BY 1 ORDER BY 1") == [
        ("applied", 1), ("rolled_back", 6)]
    with pytest.raises(Exception) as again:
        migrate.rollback(populated.root / "spec.toml", ids[0], db=populated.db_url)
    assert "is rolled_back, not applied" in str(again.value)


def test_a_concurrent_writer_never_waits_longer_than_lock_timeout(populated: Loader, sql) -> None:
    """The writer's lock_timeout is the spec's: any wait beyond it would fail its statement."""
    populated.spec(V2.replace('channel = { const = "web", type = "text", required = true }\n', ""))
    stop, errors = threading.Event(), []
    inserted: dict[int, int] = {}
    bumps: dict[int, int] = {}

    def writer() -> None:
        with psycopg.connect(populated.db_url, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '2s'")
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    conn.execute(f"INSERT INTO {TARGET} (id, qty, amount, _run_id) VALUES (%s, %s, 1, 0)",
                                 (ROWS + n, n % 7))
                    inserted[ROWS + n] = n % 7
                    conn.execute(f"UPDATE {TARGET} SET qty = qty + 1 WHERE id = %s", (n * 37 % ROWS,))
                    bumps[n * 37 % ROWS] = bumps.get(n * 37 % ROWS, 0) + 1
                except psycopg.Error as exc:
                    errors.append(exc)
                    return

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.5)
        report = migrate.apply(populated.root / "spec.toml", db=populated.db_url, batch_rows=5_000)
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert errors == []
    assert report.rows_before >= ROWS and report.rows_after > report.rows_before
    # each row reads what the writer wrote, whichever side of the copy or the swap it wrote on
    assert sql(f"SELECT id, qty FROM {TARGET} WHERE id >= %s ORDER BY id", (ROWS,)) == sorted(inserted.items())
    touched = sorted(bumps)
    assert sql(f"SELECT id, qty FROM {TARGET} WHERE id = ANY(%s) ORDER BY id", (touched,)) == [
        (i, (1 if i == 0 else i % 1000) + bumps[i]) for i in touched]
    assert sql(f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '{TARGET}'::regclass"
               " AND attname = 'qty'") == [("bigint",)]


def test_an_invalid_index_left_by_a_crashed_build_is_rebuilt(populated: Loader, sql) -> None:
    populated.spec(V1 + '\n[indexes]\nby_email = { columns = ["email"] }\n')
    # a concurrent build that failed half way leaves an invalid index behind, as a killed one does
    with pytest.raises(psycopg.Error):
        sql(f"CREATE UNIQUE INDEX CONCURRENTLY by_email ON {TARGET} ((email IS NULL))")
    assert sql("SELECT indisvalid FROM pg_index WHERE indexrelid = 'm.by_email'::regclass") == [(False,)]
    plan = migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    assert [c.summary for c in plan.changes] == ["rebuild invalid index 'by_email'"]
    assert [s.what for s in plan.changes[0].steps] == ["drop the invalid index a crashed build left",
                                                        "build the index concurrently"]
    migrate.apply(populated.root / "spec.toml", db=populated.db_url)
    assert sql("SELECT indisvalid, pg_get_indexdef(indexrelid) FROM pg_index"
               " WHERE indexrelid = 'm.by_email'::regclass") == [
        (True, 'CREATE INDEX by_email ON m."Orders" USING btree (email)')]


def test_drop_removed_drops_and_says_it_cannot_be_undone(populated: Loader, sql, capsys) -> None:
    populated.spec(V1.replace('legacy = { from = "legacy", type = "text" }\n', ""))
    plan = migrate.plan(populated.root / "spec.toml", db=populated.db_url, drop_removed=True)
    assert [(c.kind, c.note) for c in plan.changes] == [("drop_column", "cannot be undone: the values are gone")]
    migrate.apply(populated.root / "spec.toml", db=populated.db_url, drop_removed=True)
    assert "legacy" not in [name for name, _, _ in shape(sql)]
    with pytest.raises(MigrationFailed, match="cannot be undone: the values are gone"):
        migrate.rollback(populated.root / "spec.toml", 1, db=populated.db_url)


def test_what_migrate_refuses(populated: Loader, sql) -> None:
    before = shape(sql)
    populated.spec(V1.replace('"varchar(20)"', '"varchar(5)"').replace('type = "numeric(10,2)"', 'type = "integer"'))
    plan = migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    assert plan.changes == ()
    assert plan.refused == (
        "column 'note': character varying(20) -> character varying(5) is not a widening pgstage migrates"
        " (it could lose values); change it by hand",
        "column 'amount': numeric(10,2) -> integer is not a widening pgstage migrates (it could lose values);"
        " change it by hand")
    populated.spec(V1.replace("m.Orders", "m.nothing"))
    with pytest.raises(TargetMismatch, match="target m.nothing does not exist: there is nothing to migrate"):
        migrate.plan(populated.root / "spec.toml", db=populated.db_url)
    assert shape(sql) == before


def test_cli_plan_apply_and_usage(populated: Loader, sql) -> None:
    spec = str(populated.root / "spec.toml")
    cli = [sys.executable, "-m", "pgstage.cli", "migrate", spec, "--db", populated.db_url]
    both = subprocess.run([*cli, "--plan", "--apply"], capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "give one of --plan, --apply and --rollback ID" in both.stderr
    planned = subprocess.run([*cli, "--json"], capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    import json
    document = json.loads(planned.stdout)
    assert [c["kind"] for c in document["changes"]][:2] == ["widen_type", "widen_type"]
    assert document["changes"][0]["steps"][2]["batched"] is True
    unknown = subprocess.run([*cli, "--rollback", "99"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and "no migration 99 of m.Orders" in unknown.stderr
    applied = subprocess.run([*cli, "--apply"], capture_output=True, text=True, timeout=300)
    assert applied.returncode == 0, applied.stderr
    assert "migration 6: new column 'channel' text (required) (6 steps, 100,000 rows written)" in applied.stdout
    assert "post-checks: no row lost (100,000 before, 100,000 after)" in applied.stdout


def test_apply_refuses_while_a_run_holds_the_pipeline(populated: Loader, sql) -> None:
    from pgstage.errors import PipelineLocked

    with psycopg.connect(populated.db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended('pgstage:orders:', 0))")
        before = shape(sql)
        with pytest.raises(PipelineLocked, match="pipeline 'orders' is being loaded by another session"):
            migrate.apply(populated.root / "spec.toml", db=populated.db_url)
        assert shape(sql) == before
        assert sql("SELECT count(*) FROM pgstage.migrations") == [(0,)]


def test_a_required_column_existing_rows_cannot_fill_is_refused_before_any_step(populated: Loader, sql) -> None:
    populated.spec(V1.replace('email = { from = "email", type = "text" }',
                              'email = { from = "email", type = "text", required = true }\n'
                              'code = { from = "code", type = "text", required = true }')
                   .replace('raw_column = "_raw"', ""))
    sql(f"UPDATE {TARGET} SET email = NULL WHERE id % 1000 = 1")
    before = shape(sql)
    with pytest.raises(MigrationFailed) as caught:
        migrate.apply(populated.root / "spec.toml", db=populated.db_url)
    assert caught.value.message == (
        "nothing was migrated on m.Orders: column 'email' is required now, but 100 rows are NULL;"
        " new column 'code' is required, but nothing derives it for the 100,000 existing rows (no const, no raw_column)")
    assert shape(sql) == before
    assert sql("SELECT count(*) FROM pgstage.migrations") == [(0,)]


def test_a_required_column_from_raw_records_lacking_it_is_refused_before_any_step(populated: Loader, sql) -> None:
    populated.spec(V1.replace('legacy = { from = "legacy", type = "text" }',
                              'legacy = { from = "legacy", type = "text" }\n'
                              'region = { from = "Region", type = "text", required = true }'))
    with pytest.raises(MigrationFailed) as caught:
        migrate.apply(populated.root / "spec.toml", db=populated.db_url)
    # ' north ' etc. are values; '' is NULL once cleaned, a quarter of the rows
    assert caught.value.message == ("nothing was migrated on m.Orders: new column 'region' is required, but 25,000"
                                    " rows have no valid value in their raw record's field 'Region'")
    assert "region" not in [name for name, _, _ in shape(sql)]
