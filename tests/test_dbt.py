"""The example dbt project (examples/sales/dbt) built by real dbt on data pgstage loaded."""

from __future__ import annotations

import csv
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dbt.cli.main")

import pgstage  # noqa: E402
from pgstage.demo import run_demo, specs_dir  # noqa: E402
from pgstage.integrations.dbt import DbtResult, run_dbt  # noqa: E402

PROJECT = Path(__file__).resolve().parents[1] / "examples" / "sales" / "dbt"
SQL = Callable[..., list[tuple[Any, ...]]]
DAYS = 5
START = date(2024, 1, 1)

# orders_daily computed directly in SQL from what pgstage loaded: the independent expectation.
DAILY = """
SELECT (ordered_at AT TIME ZONE 'UTC')::date, source, count(*),
       count(*) FILTER (WHERE status = 'confirmed'), sum(amount_cents), sum(coalesce(refunded_cents, 0)),
       coalesce(sum(amount_cents - coalesce(refunded_cents, 0)) FILTER (WHERE status = 'confirmed'), 0)
FROM sales.orders GROUP BY 1, 2 ORDER BY 1, 2"""
BUILT = """
SELECT order_day, order_source, orders, confirmed_orders, gross_cents, refunded_cents, net_cents
FROM analytics.orders_daily ORDER BY 1, 2"""


def _build(tmp_path: Path, db_url: str, *args: str) -> DbtResult:
    return run_dbt(["build", *args, "--target-path", str(tmp_path / "target"), "--log-path", str(tmp_path / "logs")],
                   project_dir=PROJECT, db=db_url)


def _late_updates(workdir: Path, day: date, orders: list[tuple[Any, ...]]) -> None:
    """A Shopify export of `day` re-exporting older orders with new values and a newer Updated at."""
    path = workdir / "data" / "shopify" / f"orders_{day.isoformat()}.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["Id", "Name", "Email", "Financial Status", "Currency", "Total", "Created at", "Updated at"])
        for order_id, email, total_cents, ordered_at in orders:
            writer.writerow([order_id, "#late", email, "paid", "USD", f"{total_cents / 100:.2f}",
                             ordered_at.strftime("%Y-%m-%d %H:%M:%S +0000"), f"{day.isoformat()} 09:00:00 +0000"])


def test_dbt_build_incremental_lookback_and_customer_history(tmp_path: Path, db_url: str, sql: SQL) -> None:
    run_demo(tmp_path / "demo", days=DAYS, orders_per_day=400, seed=11, db=db_url)

    first = _build(tmp_path, db_url)
    assert first.success, first.failed()
    ids = {n.unique_id for n in first.nodes}
    assert {"model.sales.stg_orders", "model.sales.orders_daily", "model.sales.customers",
            "snapshot.sales.customers_snapshot"} <= ids
    tests = {i.split(".")[2] for i in ids if i.startswith("test.")}
    assert any(t.startswith("non_negative_") for t in tests) and any(t.startswith("not_in_future_") for t in tests)
    assert any(t.startswith("relationships_") for t in tests) and any(t.startswith("accepted_values_") for t in tests)
    assert any(t.startswith("source_not_null_") for t in tests)
    assert sql(BUILT) == sql(DAILY)

    # Two late updates arrive in the next day's Shopify export: an order three days before the
    # latest day built (inside the lookback) and one four days before it (outside), whose
    # customer has no other order and also changed email. The latest UTC day can be the day
    # after the last file: a shop's evening orders are past midnight UTC.
    [(last,)] = sql("SELECT max(order_day) FROM analytics.orders_daily")
    inside, outside = last - timedelta(days=3), last - timedelta(days=4)
    [(a_id, a_email, a_cents, a_at)] = sql(
        "SELECT source_order_id, customer_email, amount_cents, ordered_at FROM sales.orders"
        " WHERE source = 'shopify' AND (ordered_at AT TIME ZONE 'UTC')::date = %s AND customer_email IS NOT NULL"
        " AND status = 'confirmed' AND currency = 'USD' ORDER BY source_order_id LIMIT 1", (inside,))
    [(b_id, b_email, b_cents, b_at)] = sql(
        "SELECT source_order_id, customer_email, amount_cents, ordered_at FROM sales.orders o"
        " WHERE source = 'shopify' AND (ordered_at AT TIME ZONE 'UTC')::date = %s AND status = 'confirmed'"
        " AND currency = 'USD' AND customer_email IS NOT NULL AND (SELECT count(*) FROM sales.orders p"
        " WHERE p.source = 'shopify' AND p.customer_email = o.customer_email) = 1"
        " ORDER BY source_order_id LIMIT 1", (outside,))
    late_day = START + timedelta(days=DAYS)
    _late_updates(tmp_path / "demo", late_day, [(a_id, a_email, a_cents + 10_000, a_at),
                                                (b_id, "moved@example.com", b_cents + 500, b_at)])
    report = pgstage.run(specs_dir() / "shopify.toml", partition=late_day, db=db_url, base_dir=tmp_path / "demo")
    assert (report.counts.read, report.counts.updated, report.counts.rejected) == (2, 2, 0)
    before = dict(((d, s), row) for d, s, *row in sql(BUILT))

    second = _build(tmp_path, db_url)
    assert second.success, second.failed()
    expected = sql(DAILY)
    built = sql(BUILT)
    corrected = {(d, s): row for d, s, *row in built}
    truth = {(d, s): row for d, s, *row in expected}
    assert corrected[(inside, "shopify")] == truth[(inside, "shopify")]
    assert corrected[(inside, "shopify")][2] == before[(inside, "shopify")][2] + 10_000   # gross_cents
    # Four days back is outside the lookback: that day keeps its earlier aggregate.
    assert corrected[(outside, "shopify")] == before[(outside, "shopify")]
    assert truth[(outside, "shopify")][2] == before[(outside, "shopify")][2] + 500
    assert {k: v for k, v in corrected.items() if k[0] != outside} == {k: v for k, v in truth.items() if k[0] != outside}

    history = sql("SELECT customer_key, lifetime_cents, dbt_valid_to IS NULL FROM analytics.customers_snapshot"
                  " WHERE customer_key IN (%s, %s, %s) ORDER BY customer_key, dbt_valid_from",
                  (f"shopify:{a_email}", f"shopify:{b_email}", "shopify:moved@example.com"))
    a_versions = [(cents, current) for key, cents, current in history if key == f"shopify:{a_email}"]
    assert len(a_versions) == 2 and a_versions[1][0] - a_versions[0][0] == 10_000
    assert [v[1] for v in a_versions] == [False, True]
    assert [(cents, current) for key, cents, current in history if key == f"shopify:{b_email}"] == [(b_cents, False)]
    assert [(cents, current) for key, cents, current in history
            if key == "shopify:moved@example.com"] == [(b_cents + 500, True)]


def test_a_failing_data_test_is_reported_by_node(tmp_path: Path, db_url: str, sql: SQL) -> None:
    run_demo(tmp_path / "demo", days=1, orders_per_day=400, seed=11, db=db_url)
    sql("UPDATE sales.orders SET ordered_at = now() + interval '2 days'"
        " WHERE source_order_id = (SELECT min(source_order_id) FROM sales.orders)")
    result = _build(tmp_path, db_url, "--select", "stg_orders")
    assert not result.success
    failed = {n.unique_id.split(".")[2] for n in result.nodes if n.status == "fail"}
    assert failed == {"not_in_future_stg_orders_ordered_at"}
