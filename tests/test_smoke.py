"""The shortest path through everything: a small CSV, every rule kind, exact results."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg

from tests.conftest import Loader

SPEC = """
[pipeline]
name = "orders"
target = "sales.orders"
key = ["source", "source_order_id"]
strategy = "upsert_if_newer"
version = "updated_at"

[source]
path = "orders.csv"

[columns]
source          = { const = "shopify" }
source_order_id = { from = "Id", type = "text", required = true }
customer_email  = { from = "Email", type = "text", normalize = ["trim", "lower"], regex = '^[^@\\s]+@[^@\\s]+$' }
amount_cents    = { from = "Total", type = "money_cents", required = true, min = 0 }
currency        = { from = "Currency", type = "char(3)", normalize = ["trim", "upper"], in = ["USD", "EUR", "GBP"] }
ordered_at      = { from = "Created at", type = "timestamptz", required = true }
updated_at      = { from = "Updated at", type = "timestamptz", zero_is_null = true }

[load]
max_reject_ratio = 0.9
"""

CSV = (
    "Id,Email,Total,Currency,Created at,Updated at,Extra\n"
    '1, Bob@X.com ,"1,234.50", usd ,2024-01-15 10:22:01 -0500,2024-01-15 10:22:01 -0500,x\n'
    "2,bad-email,-5.00,EUR,2024-01-15 11:00:00 -0500,0000-00-00 00:00:00,y\n"
    "3,c@d.e,12,GBP,now,2024-01-16 10:00:00 +0000,z\n"
    "1,bob@x.com,1234.50,USD,2024-01-15 10:22:01 -0500,2024-01-16 10:00:00 -0500,w\n"
    "4,ragged\n"
    '5,"e@f.g",1.5,XXX,2024-02-30 10:00:00,,\n'
    "6,,7.25,eur,2024-01-17 08:00:00 +0100,0000-00-00 00:00:00,\n"
)


def test_every_rule_kind_and_the_identity(loader: Loader, sql) -> None:
    loader.spec(SPEC)
    loader.write("orders.csv", CSV)
    report = loader.run()
    c = report.counts
    assert (c.read, c.rejected, c.valid, c.duplicate, c.inserted, c.updated, c.unchanged, c.stale) == (7, 4, 3, 1, 2, 0, 0, 0)
    assert report.status == "succeeded"
    assert report.files[0].ignored_fields == ("Extra",)
    assert report.rejects_by_rule == {
        "amount_cents.min": 1, "currency.in": 1, "customer_email.regex": 1, "ordered_at.special": 1,
        "ordered_at.type": 1, "parse": 1,
    }
    rows = sql("SELECT source, source_order_id, customer_email, amount_cents, currency, ordered_at, updated_at"
               " FROM sales.orders ORDER BY source_order_id")
    utc = timezone.utc
    assert rows == [
        ("shopify", "1", "bob@x.com", 123450, "USD", datetime(2024, 1, 15, 15, 22, 1, tzinfo=utc),
         datetime(2024, 1, 16, 15, 0, tzinfo=utc)),
        ("shopify", "6", None, 725, "EUR", datetime(2024, 1, 17, 7, 0, tzinfo=utc), None),
    ]
    rejects = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [r[0] for r in rejects] == [2, 3, 5, 6]
    assert rejects[0][1] == [
        {"column": "customer_email", "rule": "regex", "message": "'bad-email' does not match ^[^@\\s]+@[^@\\s]+$"},
        {"column": "amount_cents", "rule": "min", "message": "-500 is below the minimum 0"},
    ]
    assert rejects[2][1] == [{"column": None, "rule": "parse", "message": "expected 7 fields, found 2"}]
    assert rejects[3][1][1]["message"] == 'date/time field value out of range: "2024-02-30 10:00:00"'
    raw = sql("SELECT raw FROM pgstage.rejects WHERE record = 2")[0][0]
    assert raw["Total"] == "-5.00" and raw["Extra"] == "y"


def test_second_run_is_skipped_and_forced_run_changes_nothing(loader: Loader, sql) -> None:
    loader.spec(SPEC)
    loader.write("orders.csv", CSV)
    loader.run()
    before = sql("SELECT * FROM sales.orders ORDER BY source_order_id")
    again = loader.run()
    assert again.status == "skipped" and again.counts.read == 0
    forced = loader.run(force=True)
    assert (forced.counts.inserted, forced.counts.updated, forced.counts.unchanged) == (0, 0, 2)
    assert sql("SELECT * FROM sales.orders ORDER BY source_order_id") == before


def oldest_ledger(sql: Callable[..., Any]) -> None:
    """The ledger's oldest shape: two tables, and a foreign key from rejects to runs."""
    sql("CREATE SCHEMA pgstage")
    sql("CREATE TABLE pgstage.runs (run_id bigserial PRIMARY KEY, pipeline text NOT NULL, partition text,"
        " target text NOT NULL, spec_path text, status text NOT NULL, started_at timestamptz NOT NULL DEFAULT now(),"
        " finished_at timestamptz, counts jsonb, rejects_by_rule jsonb, files jsonb, message text, host text, pid integer)")
    sql("CREATE TABLE pgstage.rejects (run_id bigint NOT NULL REFERENCES pgstage.runs, file text NOT NULL,"
        " record bigint NOT NULL, raw jsonb NOT NULL, reasons jsonb NOT NULL)")


def test_a_ledger_of_an_earlier_version_is_upgraded_once(loader: Loader, sql) -> None:
    """Older ledgers lack columns and had a foreign key from rejects to runs: both are fixed, and a
    ledger already current is left alone (no ALTER TABLE, whose exclusive lock would queue)."""
    oldest_ledger(sql)
    loader.spec(SPEC)
    loader.write("orders.csv", CSV)
    report = loader.run()
    assert report.counts.rejected == 4
    assert sql("SELECT count(*) FROM pg_constraint WHERE conrelid = 'pgstage.rejects'::regclass AND contype = 'f'") == [(0,)]
    assert sql("SELECT count(*) FROM pgstage.rejects WHERE batch_no = 0 AND resolved_by IS NULL") == [(4,)]
    assert sql("SELECT attempts, dry_run FROM pgstage.runs") == [(1, False)]
    # Current now: another session writing rejects does not hold up the next run's ledger check.
    with psycopg.connect(loader.db_url) as other:
        other.execute("LOCK TABLE pgstage.rejects IN ROW EXCLUSIVE MODE")
        assert loader.run(force=True).status == "succeeded"
