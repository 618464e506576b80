"""`pgstage migrate`: each kind of change on a populated target, crash-resumed, rolled back, under a writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgstage import migrate
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
    text = migrate.render(plan)
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
