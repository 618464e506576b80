"""PgstageOperator with real Airflow classes against the embedded server: outcomes and XComs.

`execute()` is called as Airflow's task runner calls it; the context's task instance is a
small recorder of XCom pushes (the DAG tests run the full runtime).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

pytest.importorskip("airflow")

from airflow.sdk.exceptions import AirflowException, AirflowFailException  # noqa: E402

from pgstage import PgstageError, UsageError  # noqa: E402
from pgstage.integrations.airflow import (FAILURE_KEY, PgstageOperator, airflow_error, connection_url, day_summary,  # noqa: E402
                                          day_text, deliver, empty_sources, notify_day, webhook_url)

SPEC = """\
[pipeline]
name = "orders"
target = "shop.orders"
key = ["id"]
strategy = "upsert"

[source]
path = "orders_{date}.csv"

[columns]
id = { from = "Id", type = "bigint" }
total = { from = "Total", type = "money_cents", min = 0 }

[load]
max_reject_ratio = 0.25
"""


class Recorder:
    """Stands in for the runtime task instance: keeps what the operator pushes."""

    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        json.dumps(value)                       # XComs must be JSON-serializable
        self.pushed[key] = value


def folder(tmp_path: Path, csv: str = "Id,Total\n1,1.00\n2,2.50\n3,3\n") -> Path:
    (tmp_path / "spec.toml").write_text(SPEC)
    (tmp_path / "orders_2024-01-01.csv").write_text(csv)
    return tmp_path / "spec.toml"


def execute(op: PgstageOperator) -> tuple[dict[str, Any], Recorder]:
    ti = Recorder()
    return op.execute({"ti": ti}), ti


def test_success_returns_the_report_and_a_rerun_is_a_visible_skip(tmp_path: Path, db_url: str, sql,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSTAGE_DATABASE_URL", db_url)          # the URL from the environment
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path)), partition="2024-01-01")
    doc, ti = execute(op)
    assert doc["status"] == "succeeded" and doc["pipeline"] == "orders" and doc["partition"] == "2024-01-01"
    assert doc["rows"] == {"read": 3, "rejected": 0, "valid": 3, "duplicate": 0, "inserted": 3, "updated": 0,
                           "unchanged": 0, "stale": 0, "deleted": 0}
    assert sql("SELECT id, total FROM shop.orders ORDER BY id") == [(1, 100), (2, 250), (3, 300)]
    assert sql("SELECT run_id, status, counts FROM pgstage.runs") == [(doc["run_id"], "succeeded", doc["rows"])]
    assert ti.pushed == {}
    again, _ = execute(op)
    assert again["status"] == "skipped" and again["rows"]["read"] == 0
    assert [f["status"] for f in again["files"]] == ["skipped"]
    assert sql("SELECT count(*) FROM shop.orders") == [(3,)]


def test_reject_threshold_fails_without_retry_with_pgstages_message(tmp_path: Path, db_url: str, sql,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSTAGE_DATABASE_URL", db_url)
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path, "Id,Total\n1,1.00\n2,-2\n3,x\n4,4\n")),
                         partition="2024-01-01")
    with pytest.raises(AirflowFailException) as failed:
        execute(op)
    message = "2 of 4 records rejected (50.0%), above max_reject_ratio 0.25: nothing was merged"
    assert str(failed.value).startswith("orders: ") and message in str(failed.value)
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]         # nothing merged
    assert sql("SELECT status FROM pgstage.runs") == [("rejected_threshold",)]


def test_failure_xcom_names_the_pipeline_and_carries_the_report(tmp_path: Path, db_url: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSTAGE_DATABASE_URL", db_url)
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path, "Id,Total\n1,1.00\n2,-2\n3,x\n4,4\n")),
                         partition="2024-01-01")
    ti = Recorder()
    with pytest.raises(AirflowFailException):
        op.execute({"ti": ti})
    failure = ti.pushed[FAILURE_KEY]
    assert failure["pipeline"] == "orders" and failure["exit_code"] == 3 and failure["partition"] == "2024-01-01"
    assert failure["report"]["status"] == "rejected_threshold"
    assert failure["report"]["rows"]["read"] == 4 and failure["report"]["rows"]["rejected"] == 2
    assert failure["report"]["rejects_by_rule"] == {"total.min": 1, "total.type": 1}


def test_lock_held_fails_so_that_airflow_retries(tmp_path: Path, db_url: str, sql) -> None:
    sql("SELECT pg_advisory_lock(hashtextextended('pgstage:orders:2024-01-01', 0))")   # another session's run
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path)), partition="2024-01-01",
                         db_conn_id="pgstage_test")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIRFLOW_CONN_PGSTAGE_TEST", connection_json(db_url))
        ti = Recorder()
        with pytest.raises(AirflowException) as failed:
            op.execute({"ti": ti})
    assert not isinstance(failed.value, AirflowFailException)          # retried, not failed for good
    assert "pipeline 'orders' partition 2024-01-01 is being loaded by another session" in str(failed.value)
    assert ti.pushed[FAILURE_KEY]["exit_code"] == 4 and ti.pushed[FAILURE_KEY]["report"] is None
    assert op.retries == 3
    assert sql("SELECT count(*) FROM pgstage.runs WHERE status <> 'running'") == [(0,)]


def test_bad_spec_fails_without_retry_and_lists_the_problem(tmp_path: Path, db_url: str,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSTAGE_DATABASE_URL", db_url)
    spec = folder(tmp_path)
    spec.write_text(SPEC.replace("min = 0", 'min = "zero"'))
    op = PgstageOperator(task_id="load", spec=str(spec), partition="2024-01-01")
    ti = Recorder()
    with pytest.raises(AirflowFailException) as failed:
        op.execute({"ti": ti})
    assert "columns.total.min" in str(failed.value)
    assert ti.pushed[FAILURE_KEY]["pipeline"] is None and ti.pushed[FAILURE_KEY]["exit_code"] == 2


def connection_json(url: str, password: str | None = None) -> str:
    """An Airflow connection (JSON form) for a libpq URL; the test server trusts, so any password passes."""
    parts = conninfo_to_dict(url)
    return json.dumps({"conn_type": "postgres", "host": parts.get("host"), "port": int(parts.get("port") or 5432),
                       "schema": parts.get("dbname"), "login": parts.get("user"),
                       "password": password or parts.get("password"),
                       "extra": {"sslmode": "disable", "cursor": "dictcursor"}})


def test_connection_url_from_an_airflow_connection(db_url: str, sql, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", connection_json(db_url))
    url = connection_url("warehouse")
    expected = {k: v for k, v in conninfo_to_dict(db_url).items() if v}
    assert conninfo_to_dict(url) == {**expected, "port": expected.get("port", "5432"), "sslmode": "disable"}
    monkeypatch.setenv("AIRFLOW_CONN_NOTPG", json.dumps({"conn_type": "mysql", "host": "h"}))
    with pytest.raises(UsageError) as wrong:
        connection_url("notpg")
    assert wrong.value.message == "Airflow connection 'notpg' is of type 'mysql', not postgres"


def test_an_undefined_connection_fails_the_task_without_retry(tmp_path: Path, db_url: str, sql) -> None:
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path)), partition="2024-01-01", db_conn_id="nowhere")
    ti = Recorder()
    with pytest.raises(AirflowFailException) as failed:
        op.execute({"ti": ti})
    assert str(failed.value).startswith("orders: Airflow connection 'nowhere' is not defined\n  hint: airflow connections add nowhere")
    assert ti.pushed[FAILURE_KEY]["pipeline"] == "orders" and ti.pushed[FAILURE_KEY]["exit_code"] == 2
    assert sql("SELECT to_regclass('pgstage.runs')") == [(None,)]          # nothing was written anywhere


def test_empty_sources_and_day_summary() -> None:
    ok = {"pipeline": "a", "status": "succeeded", "rows": {"read": 5}, "message": None}
    empty = {"pipeline": "b", "status": "succeeded", "rows": {"read": 0}, "message": None}
    skipped = {"pipeline": "c", "status": "skipped", "rows": {"read": 0}, "message": "already loaded"}
    assert empty_sources([ok, empty, skipped]) == ["b"]
    failure = {"spec": "/x/d.toml", "pipeline": "d", "exit_code": 3, "message": "too many", "report": None}
    summary = day_summary(dag_id="sales_daily", run_id="r", partition="2024-01-01", reports=[ok, skipped],
                          failures=[failure], task_states={"load_0": "success", "load_1": "failed", "dbt": "skipped"})
    assert summary["status"] == "failed" and summary["failed_sources"] == ["d"]
    assert summary["failed_tasks"] == ["load_1"]
    assert [s["pipeline"] for s in summary["sources"]] == ["a", "c", "d"]
    clean = day_summary(dag_id="s", run_id="r", partition=None, reports=[ok], failures=[], task_states={"load_0": "success"})
    assert clean["status"] == "succeeded" and clean["failed_sources"] == []


@pytest.mark.parametrize(("code", "retried"), [(1, True), (2, False), (3, False), (4, True), (5, False)])
def test_exit_codes_map_to_retry_or_not(code: int, retried: bool) -> None:
    class Failure(PgstageError, exit_code=code):  # type: ignore[arg-type]  # pgstage's errors name their exit status
        pass

    error = airflow_error(Failure("volume 12 is 95% below the median of 7 days"), "shopify_orders")
    assert isinstance(error, AirflowException) and isinstance(error, AirflowFailException) is not retried
    assert str(error) == "shopify_orders: volume 12 is 95% below the median of 7 days"


def test_the_connections_password_never_reaches_the_log(tmp_path: Path, db_url: str,
                                                        capsys: pytest.CaptureFixture[str],
                                                        caplog: pytest.LogCaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", connection_json(db_url, password="pw-Zq81-secret"))
    op = PgstageOperator(task_id="load", spec=str(folder(tmp_path, "Id,Total\n1,1.00\n2,-2\n3,x\n4,4\n")),
                         partition="2024-01-01", db_conn_id="warehouse")
    ti = Recorder()
    with pytest.raises(AirflowFailException) as failed:
        op.execute({"ti": ti})
    out = capsys.readouterr()
    seen = out.out + out.err + caplog.text + str(failed.value) + json.dumps(ti.pushed)
    assert "rejected" in seen and "pw-Zq81-secret" not in seen


class Hook:
    """A real HTTP endpoint on 127.0.0.1 for one test."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer

        bodies: list[Any] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                bodies.append((self.path, self.headers["Content-Type"],
                               json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(500 if "fail" in self.path else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_deliver_posts_json_and_says_where_it_failed_without_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = Hook()
    try:
        payload = {"status": "failed", "failed_sources": ["stripe_payments"]}
        assert deliver(payload, f"{hook.base}/hook?token=tok-Zq81-secret") is True
        assert hook.bodies == [("/hook?token=tok-Zq81-secret", "application/json", payload)]
        with pytest.raises(AirflowException) as refused:
            deliver(payload, f"{hook.base}/fail?token=tok-Zq81-secret")
        assert str(refused.value) == "posting the notification to 127.0.0.1 failed: 500"
        with pytest.raises(AirflowFailException) as scheme:
            deliver(payload, "file:///etc/passwd")
        assert "must be an http(s) URL, not file://" in str(scheme.value)
        # nothing configured: nothing posted, and the caller is told so
        monkeypatch.delenv("PGSTAGE_ALERT_WEBHOOK", raising=False)
        monkeypatch.delenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", raising=False)
        assert webhook_url() is None and deliver(payload) is False
        # the environment, then the Airflow Variable, which wins
        monkeypatch.setenv("PGSTAGE_ALERT_WEBHOOK", f"{hook.base}/from-env")
        assert webhook_url() == f"{hook.base}/from-env"
        monkeypatch.setenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", f"{hook.base}/from-variable")
        assert deliver(payload) is True and hook.bodies[-1][0] == "/from-variable"
        assert len(hook.bodies) == 3
    finally:
        hook.close()
    with pytest.raises(AirflowException) as gone:
        deliver({"x": 1}, f"{hook.base}/hook?token=tok-Zq81-secret")      # the server is closed now
    assert str(gone.value).startswith("posting the notification to 127.0.0.1 failed: ")
    assert "tok-Zq81-secret" not in str(gone.value)


def a_failed_day() -> dict[str, Any]:
    ok = {"pipeline": "shopify_orders", "status": "succeeded", "message": None,
          "rows": {"read": 3, "rejected": 0, "valid": 3, "duplicate": 0, "inserted": 3, "updated": 0, "unchanged": 0,
                   "stale": 0, "deleted": 0}}
    failure = {"spec": "stripe.toml", "pipeline": "stripe_payments", "exit_code": 3, "message": "too many rejects",
               "report": None}
    return day_summary(dag_id="sales_daily", run_id="scheduled__2024-01-03T02:00:00+00:00", partition="2024-01-02",
                       reports=[ok], failures=[failure], task_states={"load_0": "success", "load_1": "failed"})


def test_notify_day_sends_through_pgstages_alerts_and_records_each_target(db_url: str, sql,
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_WAREHOUSE", connection_json(db_url))
    monkeypatch.delenv("PGSTAGE_ALERT_WEBHOOK", raising=False)
    hook = Hook()
    try:
        summary = a_failed_day()
        # nothing configured: nothing sent, nothing recorded
        monkeypatch.delenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", raising=False)
        monkeypatch.delenv("PGSTAGE_ALERT_SLACK", raising=False)
        assert notify_day(summary, "warehouse") == []
        # the Airflow Variable's webhook and pgstage's Slack variable: both get it, each as its format
        monkeypatch.setenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", f"{hook.base}/hook/day?token=tok-Zq81-secret")
        monkeypatch.setenv("PGSTAGE_ALERT_SLACK", f"{hook.base}/services/T0/B0/slack-Zq81-secret")
        port = hook.base.rsplit(":", 1)[1]
        webhook, slack = f"http://127.0.0.1:{port}/hook/***?***", f"http://127.0.0.1:{port}/services/***"
        outcomes = notify_day(summary, "warehouse")
        assert outcomes == [
            {"event": "summary", "target": webhook, "status": "sent", "attempts": 1, "error": None, "recorded": True},
            {"event": "summary", "target": slack, "status": "sent", "attempts": 1, "error": None, "recorded": True}]
        text = day_text(summary)
        assert text == ("sales_daily 2024-01-02: failed; failed sources: stripe_payments; failed tasks: load_1;"
                        " shopify_orders succeeded (3 read) (run scheduled__2024-01-03T02:00:00+00:00)")
        assert hook.bodies == [("/hook/day?token=tok-Zq81-secret", "application/json", summary),
                               ("/services/T0/B0/slack-Zq81-secret", "application/json", {"text": text})]
        assert sql("SELECT run_id, pipeline, partition, event, target, status, attempts, error, payload"
                   " FROM pgstage.alerts ORDER BY alert_id") == [
            (None, "sales_daily", "2024-01-02", "summary", webhook, "sent", 1, None, summary),
            (None, "sales_daily", "2024-01-02", "summary", slack, "sent", 1, None, summary)]
        # the same day again is sent again: a summary is never suppressed
        monkeypatch.delenv("PGSTAGE_ALERT_SLACK")
        assert [o["status"] for o in notify_day(summary, "warehouse")] == ["sent"]
        # every target failing fails the task (Airflow retries it); the failure is recorded, the token nowhere
        monkeypatch.setenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", f"{hook.base}/fail/day?token=tok-Zq81-secret")
        with pytest.raises(AirflowException) as nobody:
            notify_day(summary, "warehouse")
        failing = f"http://127.0.0.1:{port}/fail/***?***"
        assert str(nobody.value) == f"the day's summary reached no target: {failing}: HTTP 500"
        assert sql("SELECT target, status, attempts, error FROM pgstage.alerts ORDER BY alert_id DESC LIMIT 1") == [
            (failing, "failed", 3, "HTTP 500")]
        assert len(hook.bodies) == 3 + 3                   # three attempts at the failing hook
        # a connection that is not defined: the summary still goes out, unrecorded, and the log says why
        monkeypatch.setenv("AIRFLOW_VAR_PGSTAGE_ALERT_WEBHOOK", f"{hook.base}/hook/day?token=tok-Zq81-secret")
        assert [(o["status"], o["recorded"]) for o in notify_day(summary, "no_such_conn")] == [("sent", False)]
        assert sql("SELECT count(*) FROM pgstage.alerts") == [(4,)]
    finally:
        hook.close()
    logged = capsys.readouterr()
    assert "tok-Zq81-secret" not in logged.out + logged.err and "slack-Zq81-secret" not in logged.out + logged.err
    assert "Airflow connection 'no_such_conn' is not defined" in logged.out
