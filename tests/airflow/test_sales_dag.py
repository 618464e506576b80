"""examples/sales/airflow/sales_daily.py run in-process by `dag.test()` against the embedded server.

The data is the demo's generator at a small size; the notification goes to a real HTTP
server on 127.0.0.1. The loaded rows are checked against the ledger and the ledger against
the XComs, so the three records of a day (table, ledger, Airflow) must agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import threading
from collections.abc import Iterator
from datetime import date, datetime, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("airflow")

from pgstage.demo.generate import generate  # noqa: E402
from tests.airflow.conftest import SALES_DAG  # noqa: E402
from tests.airflow.test_operator import connection_json  # noqa: E402

PIPELINES = {"shopify": "shopify_orders", "stripe": "stripe_payments", "woocommerce": "woocommerce_orders"}
DAY_1, DAY_2 = datetime(2024, 1, 2, 2, tzinfo=timezone.utc), datetime(2024, 1, 3, 2, tzinfo=timezone.utc)


class Webhook:
    """A real HTTP endpoint on 127.0.0.1 that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/sales?token=s3cret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture
def sales(tmp_path: Path, db_url: str, webhook: Webhook, airflow_db: None, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The DAG module, imported afresh with this test's data, database and webhook."""
    generate(tmp_path / "data", days=2, orders_per_day=400, seed=7, start=date(2024, 1, 1))
    monkeypatch.setenv("PGSTAGE_SALES_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("AIRFLOW_CONN_PGSTAGE_SALES", connection_json(db_url))
    monkeypatch.setenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", webhook.url)
    monkeypatch.delenv("PGSTAGE_DATABASE_URL", raising=False)
    spec = importlib.util.spec_from_file_location("sales_daily", SALES_DAG)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def no_dbt(monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH without the `dbt` command (CI puts one there), so dbt_build is skipped and the test stays about the loads."""
    kept = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not os.access(os.path.join(d, "dbt"), os.X_OK)]
    monkeypatch.setenv("PATH", os.pathsep.join(kept))


def states(run: Any) -> dict[str, str]:
    return {(ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"): str(ti.state)
            for ti in run.get_task_instances()}


def xcoms(run: Any, key: str) -> list[Any]:
    loads = sorted((ti for ti in run.get_task_instances() if ti.task_id == "load"), key=lambda ti: ti.map_index)
    found = [ti.xcom_pull(task_ids="load", key=key, map_indexes=ti.map_index) for ti in loads]
    return [x for x in found if x is not None]


def test_two_days_load_every_feed_and_match_the_ledger(sales: ModuleType, sql, webhook: Webhook, no_dbt: None) -> None:
    for logical, day in ((DAY_1, "2024-01-01"), (DAY_2, "2024-01-02")):
        run = sales.dag.test(logical_date=logical)
        assert str(run.state) == "success"
        assert states(run) == {"feeds": "success", "load[0]": "success", "load[1]": "success", "load[2]": "success",
                               "check_volumes": "success", "dbt_build": "skipped", "notify": "success",
                               "day_failed": "skipped"}
        reports = xcoms(run, "return_value")
        assert [r["pipeline"] for r in reports] == list(PIPELINES.values())      # specs in name order
        for report in reports:
            assert report["status"] == "succeeded" and report["partition"] == day and report["rows"]["read"] > 0
            rows = report["rows"]
            assert rows["read"] == rows["rejected"] + rows["valid"]
            assert rows["valid"] == rows["duplicate"] + rows["inserted"] + rows["updated"] + rows["unchanged"] + rows["stale"]
            # the XCom is the ledger's record of the run
            assert sql("SELECT pipeline, partition, status, counts FROM pgstage.runs WHERE run_id = %s",
                       (report["run_id"],)) == [(report["pipeline"], day, "succeeded", rows)]
        summary = webhook.received[-1]
        assert summary["status"] == "succeeded" and summary["partition"] == day and summary["failed_sources"] == []
        assert {s["pipeline"]: s["rows"] for s in summary["sources"]} == {r["pipeline"]: r["rows"] for r in reports}
    assert len(webhook.received) == 2
    # the first day again: every feed is skipped (the same bytes were loaded), and the day is green
    rerun = sales.dag.test(logical_date=DAY_1)
    assert str(rerun.state) == "success" and states(rerun)["check_volumes"] == "success"
    assert [(r["pipeline"], r["status"], r["rows"]["read"]) for r in xcoms(rerun, "return_value")] == [
        (p, "skipped", 0) for p in PIPELINES.values()]
    assert [s["status"] for s in webhook.received[-1]["sources"]] == ["skipped"] * 3
    # each summary went through pgstage's alert channel: recorded in the warehouse, the webhook's token masked
    assert sql("SELECT run_id, pipeline, partition, event, target, status, attempts, payload FROM pgstage.alerts"
               " ORDER BY alert_id") == [
        (None, "sales_daily", day, "summary", f"http://127.0.0.1:{webhook.server.server_port}/hooks/***?***", "sent", 1,
         body) for day, body in zip(("2024-01-01", "2024-01-02", "2024-01-01"), webhook.received, strict=True)]
    # the table holds exactly the rows the ledger says were inserted, per source
    ledger = dict(sql("SELECT pipeline, sum((counts->>'inserted')::int) FROM pgstage.runs"
                      " WHERE status = 'succeeded' GROUP BY pipeline"))
    table = dict(sql("SELECT source, count(*) FROM sales.orders GROUP BY source"))
    assert {PIPELINES[s]: n for s, n in table.items()} == ledger
    assert sql("SELECT pipeline, partition, status FROM pgstage.runs ORDER BY status, partition, pipeline") == [
        *((p, "2024-01-01", "skipped") for p in sorted(PIPELINES.values())),
        *((p, d, "succeeded") for d in ("2024-01-01", "2024-01-02") for p in sorted(PIPELINES.values()))]


def bad_amounts(path: Path, count: int) -> range:
    """Append records whose Amount is negative (each an amount_cents `min` reject); their record numbers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    extra = [f"ch_bad{i},2024-01-02 10:00:00,-5.00,0.00,usd,succeeded,a{i}@example.com" for i in range(count)]
    path.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
    return range(len(lines), len(lines) + count)          # the header is line 1, record 1 is line 2


def test_a_day_over_the_reject_threshold_fails_its_load_and_still_notifies(sales: ModuleType, sql, webhook: Webhook,
                                                                          tmp_path: Path, no_dbt: None,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    stripe = tmp_path / "data" / "stripe" / "orders_2024-01-02.csv"
    appended = bad_amounts(stripe, 20)           # ~80 orders + 20 refused: well above 5%
    assert sales.dag.test(logical_date=DAY_1).state == "success"
    before = sql("SELECT source, source_order_id, amount_cents, status FROM sales.orders ORDER BY 1, 2")

    run = sales.dag.test(logical_date=DAY_2)
    assert str(run.state) == "failed"
    assert states(run) == {"feeds": "success", "load[0]": "success", "load[1]": "failed", "load[2]": "success",
                           "check_volumes": "upstream_failed", "dbt_build": "upstream_failed", "notify": "success",
                           "day_failed": "failed"}
    failure = xcoms(run, "pgstage_failure")
    assert [f["pipeline"] for f in failure] == ["stripe_payments"] and failure[0]["exit_code"] == 3
    ledger = sql("SELECT status, message, counts FROM pgstage.runs WHERE pipeline = 'stripe_payments'"
                 " AND partition = '2024-01-02'")
    assert [row[0] for row in ledger] == ["rejected_threshold"]
    assert failure[0]["report"]["rows"] == ledger[0][2]
    assert ledger[0][2]["rejected"] >= 20 and ledger[0][2]["rejected"] > 0.05 * ledger[0][2]["read"]
    too_low = [r for (r,) in sql(
        "SELECT record FROM pgstage.rejects r JOIN pgstage.runs u USING (run_id) WHERE u.pipeline = 'stripe_payments'"
        " AND u.partition = '2024-01-02' AND r.reasons @> '[{\"column\": \"amount_cents\", \"rule\": \"min\"}]'"
        " ORDER BY record")]
    assert set(appended) <= set(too_low)
    assert sql("SELECT rejects_by_rule FROM pgstage.runs WHERE pipeline = 'stripe_payments'"
               " AND partition = '2024-01-02'")[0][0]["amount_cents.min"] == len(too_low)
    # nothing of the failed day's stripe file was merged; the other feeds' day was
    after = sql("SELECT source, source_order_id, amount_cents, status FROM sales.orders WHERE source = 'stripe' ORDER BY 1, 2")
    assert after == [r for r in before if r[0] == "stripe"]

    summary = webhook.received[-1]
    assert summary["status"] == "failed" and summary["partition"] == "2024-01-02"
    assert summary["failed_sources"] == ["stripe_payments"]
    assert summary["failed_tasks"] == ["check_volumes", "dbt_build", "load_1"]
    failed = [s for s in summary["sources"] if s["status"] == "failed"]
    assert failed == [{"pipeline": "stripe_payments", "status": "failed", "rows": ledger[0][2],
                       "message": failure[0]["message"]}]
    assert "above max_reject_ratio 0.05: nothing was merged" in failed[0]["message"]
    assert {s["pipeline"] for s in summary["sources"] if s["status"] == "succeeded"} == {"shopify_orders", "woocommerce_orders"}
    assert sql("SELECT partition, event, status, payload->'failed_sources' FROM pgstage.alerts"
               " WHERE pipeline = 'sales_daily' ORDER BY alert_id") == [
        ("2024-01-01", "summary", "sent", []), ("2024-01-02", "summary", "sent", ["stripe_payments"])]
    logged = capsys.readouterr()
    assert failure[0]["message"].splitlines()[0] in logged.out + logged.err     # the task log has pgstage's words
    assert "s3cret-token" not in logged.out + logged.err                # the webhook's secret is never logged


def test_an_empty_export_fails_the_volume_check(sales: ModuleType, webhook: Webhook, tmp_path: Path,
                                                no_dbt: None) -> None:
    woo = tmp_path / "data" / "woocommerce" / "orders_2024-01-01.csv"
    woo.write_text(woo.read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")   # the header only
    run = sales.dag.test(logical_date=DAY_1)
    assert str(run.state) == "failed"
    got = states(run)
    assert got["check_volumes"] == "failed" and got["notify"] == "success" and got["dbt_build"] == "upstream_failed"
    assert all(got[f"load[{i}]"] == "success" for i in range(3))
    assert webhook.received[-1]["failed_tasks"] == ["check_volumes", "dbt_build"]
    assert webhook.received[-1]["status"] == "failed"


def test_the_dags_schedule_and_shape(sales: ModuleType) -> None:
    dag = sales.dag
    from airflow.serialization.encoders import coerce_to_core_timetable
    from airflow.timetables.base import TimeRestriction

    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 2 * * *" and str(dag.timetable.timezone) == "UTC"
    # the first run fires at 2024-01-02 02:00 with that logical date, so it loads 2024-01-01
    core = coerce_to_core_timetable(dag.timetable)
    first = core.next_dagrun_info(last_automated_data_interval=None,
                                  restriction=TimeRestriction(dag.start_date, None, catchup=True))
    assert first is not None and first.logical_date == datetime(2024, 1, 2, 2, tzinfo=timezone.utc)
    assert dag.catchup is True and dag.max_active_runs == 1
    assert dag.start_date == datetime(2024, 1, 2, tzinfo=timezone.utc)
    assert dag.get_task("notify").trigger_rule == "all_done"
    assert dag.get_task("day_failed").trigger_rule == "one_failed"
    assert dag.get_task("load").upstream_task_ids == {"feeds"}                  # mapped over feeds()
    assert dag.get_task("dbt_build").upstream_task_ids == {"check_volumes"}
    assert dag.get_task("notify").upstream_task_ids == {"load", "check_volumes", "dbt_build"}


# orders_daily computed directly in SQL over what pgstage loaded: the independent expectation.
DAILY = """
SELECT (ordered_at AT TIME ZONE 'UTC')::date, source, count(*),
       count(*) FILTER (WHERE status = 'confirmed'), sum(amount_cents), sum(coalesce(refunded_cents, 0)),
       coalesce(sum(amount_cents - coalesce(refunded_cents, 0)) FILTER (WHERE status = 'confirmed'), 0)
FROM sales.orders GROUP BY 1, 2 ORDER BY 1, 2"""
BUILT = """
SELECT order_day, order_source, orders, confirmed_orders, gross_cents, refunded_cents, net_cents
FROM analytics.orders_daily ORDER BY 1, 2"""


@pytest.mark.skipif(shutil.which("dbt") is None, reason="the dbt command is not on PATH (CI puts the orchestration venv's bin there)")
def test_dbt_builds_the_models_in_the_database_the_loads_used(sales: ModuleType, sql, webhook: Webhook, db_url: str,
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # A connection with a password (the test server trusts, so any passes): dbt must get it, no log may show it.
    monkeypatch.setenv("AIRFLOW_CONN_PGSTAGE_SALES", connection_json(db_url, password="pw-dbt-s3cret"))
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"):   # only the connection may say where
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DBT_TARGET_PATH", str(tmp_path / "dbt-target"))       # not into examples/sales/dbt
    monkeypatch.setenv("DBT_LOG_PATH", str(tmp_path / "dbt-logs"))
    monkeypatch.setenv("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    for logical, day in ((DAY_1, "2024-01-01"), (DAY_2, "2024-01-02")):
        run = sales.dag.test(logical_date=logical)
        assert str(run.state) == "success"
        assert states(run)["dbt_build"] == "success"
        assert webhook.received[-1]["tasks"]["dbt_build"] == "success"
        # dbt built in the test's own database (nowhere else has these orders): orders_daily is the
        # bare aggregate of every day loaded so far, the second day built incrementally
        assert sql("SELECT max((ordered_at AT TIME ZONE 'UTC')::date)::text FROM sales.orders")[0][0] >= day
        built = sql(BUILT)
        assert built == sql(DAILY)
        assert {d.isoformat() for d, *_ in built} >= {"2024-01-01", day}
        assert {s for _, s, *_ in built} == {"shopify", "stripe", "woocommerce"}
    assert sql("SELECT count(*) FROM analytics.customers_snapshot")[0][0] > 0
    logged = capsys.readouterr()
    assert "pw-dbt-s3cret" not in logged.out + logged.err
