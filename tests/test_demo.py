"""`pgstage demo` end to end on a small data set, through the real CLI command."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.demo import run_demo
from tests.conftest import assert_identity


def test_demo_loads_every_source_and_a_second_demo_skips_everything(tmp_path: Path, db_url: str, sql) -> None:
    first = run_demo(tmp_path / "demo", days=3, orders_per_day=900, db=db_url)
    assert len(first.reports) == 12   # 3 days x (3 feeds + the Stripe history)
    for report in first.reports:
        assert_identity(report)
        assert report.status == "succeeded", report.message
        assert report.counts.read > 0 and report.counts.rejected > 0
    inserted = sum(r.counts.inserted for r in first.reports if r.target == "sales.orders")
    assert sql("SELECT count(*) FROM sales.orders")[0][0] == inserted
    assert sum(r.counts.stale for r in first.reports) > 0
    assert sum(r.counts.updated for r in first.reports) > 0
    assert sql("SELECT count(*) FROM pgstage.rejects")[0][0] == sum(r.counts.rejected for r in first.reports)
    assert {row[1] for row in first.revenue} == {"shopify", "woocommerce", "stripe"}
    # The history holds one current version per charge (every Stripe order among them: the history spec
    # checks fewer columns), and a changed charge's older versions.
    history = [r for r in first.reports if r.pipeline == "stripe_history"]
    assert sql("SELECT count(*) = count(DISTINCT source_order_id) FILTER (WHERE _is_current),"
               " count(DISTINCT source_order_id) FROM sales.payment_history WHERE _is_current")[0] == \
        (True, sum(r.counts.inserted for r in history))
    assert sql("SELECT count(*) FROM sales.orders o WHERE source = 'stripe' AND NOT EXISTS (SELECT 1 FROM"
               " sales.payment_history h WHERE h.source_order_id = o.source_order_id AND h._is_current)") == [(0,)]
    assert sql("SELECT count(*) FROM sales.payment_history WHERE NOT _is_current")[0][0] == \
        sum(r.counts.updated for r in history) > 0

    before = sql("SELECT * FROM sales.orders ORDER BY source, source_order_id")
    second = run_demo(tmp_path / "demo", days=3, orders_per_day=900, db=db_url)
    assert {r.status for r in second.reports} == {"skipped"}
    assert sum(r.counts.inserted + r.counts.updated for r in second.reports) == 0
    assert sql("SELECT * FROM sales.orders ORDER BY source, source_order_id") == before


def test_demo_command_prints_runs_and_revenue(tmp_path: Path, db_url: str) -> None:
    result = CliRunner().invoke(app, ["demo", "--days", "1", "--orders-per-day", "300", "--dir",
                                      str(tmp_path / "d"), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "shopify_orders" in result.output and "stripe_payments" in result.output
    assert "confirmed revenue per day and source" in result.output
    page = tmp_path / "d" / "report.html"
    assert f"report: {page}" in result.output.replace("\n", "")
    html = page.read_text()
    # the last run of the day is the Stripe payments' history (scd2, from the same files)
    assert html.startswith("<!doctype html>") and "stripe_history" in html and 'data-chart="funnel"' in html
    for name in ("shopify_orders", "woocommerce_orders", "stripe_payments", "stripe_history"):
        assert "<h1>" + name + "</h1>" in (tmp_path / "d" / f"report-{name}.html").read_text()
    assert "logs: stderr, console format" in result.output
    assert "alerts: none configured (set PGSTAGE_ALERT_WEBHOOK" in result.output
