"""examples/sales/definitions.py: pgstage feeds and the dbt project as one Dagster graph, for one day."""

import os
import runpy
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

dg = pytest.importorskip("dagster")
pytest.importorskip("dagster_dbt")
pytest.importorskip("dbt.cli.main")

from pgstage.demo.generate import generate  # noqa: E402

DEFINITIONS = Path(__file__).resolve().parents[1] / "examples" / "sales" / "definitions.py"
SQL = Callable[..., list[tuple[Any, ...]]]
DAILY = """
SELECT (ordered_at AT TIME ZONE 'UTC')::date, source, count(*), sum(amount_cents)
FROM sales.orders GROUP BY 1, 2 ORDER BY 1, 2"""


@pytest.fixture
def defs(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    generate(tmp_path / "data", days=2, orders_per_day=400, seed=11, start=date(2024, 1, 1))
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE"):   # the dbt asset sets them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGSTAGE_DATABASE_URL", db_url)
    monkeypatch.setenv("PGSTAGE_DEMO_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # the dbt command
    yield runpy.run_path(str(DEFINITIONS))["defs"]


def test_the_graph_keys_dbt_downstream_of_the_pgstage_asset(defs: Any) -> None:
    graph = defs.resolve_asset_graph()
    parents = {k.to_user_string(): sorted(p.to_user_string() for p in graph.get(k).parent_keys)
               for k in graph.get_all_asset_keys()}
    assert parents == {"sales/orders": [], "stg_orders": ["sales/orders"], "orders_daily": ["stg_orders"],
                       "customers": ["stg_orders"], "customers_snapshot": ["customers"]}
    assert defs.resolve_schedule_def("sales_daily_schedule").cron_schedule == "0 2 * * *"
    policy = graph.get(dg.AssetKey(["orders_daily"])).freshness_policy
    assert (policy.deadline_cron, policy.timezone) == ("0 8 * * *", "UTC")


def test_one_day_of_the_whole_graph_loads_builds_and_tests(defs: Any, sql: SQL) -> None:
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("sales_daily").execute_in_process(partition_key="2024-01-01", instance=instance)
    assert result.success
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert built == {"sales/orders", "stg_orders", "orders_daily", "customers", "customers_snapshot"}
    checks = result.get_asset_check_evaluations()
    assert len(checks) > 20 and all(c.passed for c in checks)
    assert sql("SELECT pipeline, status FROM pgstage.runs ORDER BY run_id") == [
        ("shopify_orders", "succeeded"), ("woocommerce_orders", "succeeded"), ("stripe_payments", "succeeded")]
    assert sql("SELECT order_day, order_source, orders, gross_cents FROM analytics.orders_daily ORDER BY 1, 2") == sql(DAILY)
    assert sql("SELECT count(*) FROM analytics.customers_snapshot WHERE dbt_valid_to IS NULL") == \
        sql("SELECT count(DISTINCT (source, customer_email)) FROM sales.orders WHERE customer_email IS NOT NULL")


def test_a_day_over_the_reject_threshold_stops_before_dbt(defs: Any, tmp_path: Path, sql: SQL) -> None:
    stripe = tmp_path / "data" / "stripe" / "orders_2024-01-02.csv"
    lines = stripe.read_text(encoding="utf-8").splitlines()
    stripe.write_text("\n".join([lines[0], *(line + ",extra" for line in lines[1:])]) + "\n", encoding="utf-8")
    with dg.instance_for_test() as instance:
        result = defs.resolve_job_def("sales_daily").execute_in_process(
            partition_key="2024-01-02", instance=instance, raise_on_error=False)
        assert not result.success
        assert instance.get_run_by_id(result.run_id).tags["pgstage/exit_code"] == "3"
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "reject_ratio"]
    assert not check.passed
    built = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert built == {"sales/orders"}                         # dbt never ran
    assert sql("SELECT to_regclass('analytics.orders_daily')") == [(None,)]
