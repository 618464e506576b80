"""Alerts against a real HTTP server on 127.0.0.1: exact payloads, suppression, recovery, and receivers that fail.

Whatever the receiver does, the run's exit code is the one it has without alerts, and every
delivery attempt is in pgstage.alerts with the URL's secret masked.
"""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.errors import SpecError
from pgstage.ops.alerts import masked, seconds
from pgstage.ops.outcome import late_since
from pgstage.spec import Spec, parse_spec

runner = CliRunner()


class Receiver:
    """A webhook receiver: records every request; `mode` is ok (200), fail (500) or hang (answers late)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.mode = "ok"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.requests.append((self.path, body))
                if receiver.mode == "hang":
                    time.sleep(2)
                self.send_response(500 if receiver.mode == "fail" else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def events(self) -> list[str]:
        return [body.get("event") or body.get("text", "").split(":")[0] for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


SPEC = """
[pipeline]
name = "orders"
target = "shop.orders"
key = ["id"]

[source]
path = "orders_{{date}}.csv"

[columns]
id = {{ from = "Id", type = "bigint" }}
total = {{ from = "Total", type = "numeric(10,2)", min = 0 }}

[load]
max_reject_ratio = 0.2

[alerts]
webhook = "{url}/hooks/T000/s3cr3t-token"
suppress = "{suppress}"
timeout = "0.5s"
retries = {retries}
"""


def setup(tmp_path: Path, url: str, csv: str, *, suppress: str = "30min", retries: int = 2) -> Path:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC.format(url=url, suppress=suppress, retries=retries)))
    (tmp_path / "orders_2024-03-05.csv").write_text(csv)
    return tmp_path / "spec.toml"


def run(spec: Path, db_url: str, *extra: str) -> int:
    return runner.invoke(app, ["run", str(spec), "--partition", "2024-03-05", "--db", db_url, *extra]).exit_code


def ledger(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT run_id, event, target, status, attempts, error FROM pgstage.alerts ORDER BY alert_id")


def test_exact_payload_of_a_failed_run(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Amount\n1,1\n")       # Total is missing: the run fails
    assert run(spec, db_url) == 2
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert sql("SELECT status FROM pgstage.runs WHERE run_id = %s", (run_id,)) == [("failed",)]
    assert len(receiver.requests) == 1
    path, body = receiver.requests[0]
    assert path == "/hooks/T000/s3cr3t-token"
    message = body.pop("message")
    assert "Total" in message and "s3cr3t" not in message
    assert body == {"event": "failed", "pipeline": "orders", "partition": "2024-03-05", "run_id": run_id,
                    "status": "failed", "rows": {}, "rejects_by_rule": {}, "host": socket.gethostname(),
                    "more": f"pgstage show {run_id}"}
    assert ledger(sql) == [(run_id, "failed", f"http://127.0.0.1:{receiver.server.server_address[1]}/hooks/***",
                            "sent", 1, None)]


def test_a_run_failing_before_it_has_an_id_points_at_no_older_run(tmp_path: Path, db_url: str, sql: Any,
                                                                   receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n")
    assert run(spec, db_url) == 0
    sql("ALTER TABLE shop.orders ALTER COLUMN total TYPE text")      # the target no longer matches the spec
    assert run(spec, db_url) == 2
    assert sql("SELECT count(*) FROM pgstage.runs") == [(1,)]       # refused before a run row was written
    (_, body), = receiver.requests
    assert (body["event"], body["run_id"], body["more"]) == ("failed", None, "pgstage runs")
    assert "does not match the spec" in body["message"]


def test_rejects_payload_names_the_counts_and_rules(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n2,-2\n3,-3\n4,4\n")
    assert run(spec, db_url) == 3
    (_, body), = receiver.requests
    assert (body["event"], body["status"]) == ("rejects", "rejected_threshold")
    assert body["rows"] == {"read": 4, "rejected": 2, "valid": 2, "duplicate": 0, "inserted": 0, "updated": 0,
                            "unchanged": 0, "stale": 0, "deleted": 0}
    assert body["rejects_by_rule"] == {"total.min": 2}


def test_suppression_then_recovered(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Amount\n1,1\n")
    assert run(spec, db_url) == 2
    assert run(spec, db_url) == 2            # the same failure again, within the window
    assert receiver.events() == ["failed"]
    assert [r[1:4:2] for r in ledger(sql)] == [("failed", "sent"), ("failed", "suppressed")]
    setup(tmp_path, receiver.url, "Id,Total\n1,1\n")
    assert run(spec, db_url) == 0            # the first success after a failure
    assert receiver.events() == ["failed", "recovered"]
    assert receiver.requests[1][1]["status"] == "succeeded"
    assert receiver.requests[1][1]["rows"]["inserted"] == 1
    setup(tmp_path, receiver.url, "Id,Total\n1,1\n2,2\n")
    assert run(spec, db_url) == 0            # recovered once, not after every success
    assert receiver.events() == ["failed", "recovered"]


def test_no_suppression_once_the_window_passed(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Amount\n1,1\n", suppress="0")
    assert run(spec, db_url) == 2
    assert run(spec, db_url) == 2
    assert receiver.events() == ["failed", "failed"]


@pytest.mark.parametrize("mode, error, attempts", [("fail", "HTTP 500", 3), ("hang", "timed out", 1)])
def test_a_failing_receiver_changes_nothing(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver, mode: str,
                                            error: str, attempts: int) -> None:
    receiver.mode = mode
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n2,-2\n3,-3\n", retries=2 if mode == "fail" else 0)
    assert run(spec, db_url) == 3                         # as without alerts
    assert sql("SELECT status FROM pgstage.runs") == [("rejected_threshold",)]
    (_, event, target, status, tries, why), = ledger(sql)
    assert (event, status, tries, why) == ("rejects", "failed", attempts, error)
    assert "s3cr3t" not in target
    setup(tmp_path, receiver.url, "Id,Total\n1,1\n")
    assert run(spec, db_url) == 0                         # a failed delivery does not fail the next run either
    assert sql("SELECT count(*) FROM shop.orders") == [(1,)]


def test_slack_format_and_targets_from_the_environment(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSTAGE_ALERT_SLACK", receiver.url + "/services/T1/B2/xyz")
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC.format(url=receiver.url, suppress="30min", retries=0)).split("[alerts]")[0])
    (tmp_path / "orders_2024-03-05.csv").write_text("Id,Total\n1,-1\n")
    assert run(spec, db_url) == 3
    (path, body), = receiver.requests
    assert path == "/services/T1/B2/xyz" and set(body) == {"text"}
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert body["text"].startswith(f"pgstage rejects: orders 2024-03-05 run {run_id} rejected_threshold — read 1,"
                                   " rejected 1, inserted 0, updated 0. ")
    assert body["text"].endswith(f"(`pgstage show {run_id}`)")
    assert [r[2] for r in ledger(sql)] == [receiver.url + "/services/***"]


def test_late_run(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    """A partition of 2024-03-05 due by 07:30 UTC on 2024-03-06 is late today, and says so; its rows are merged."""
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n")
    spec.write_text(spec.read_text() + 'late = "07:30"\n')
    assert run(spec, db_url) == 0
    (_, body), = receiver.requests
    assert (body["event"], body["status"], body["rows"]["inserted"]) == ("late", "succeeded", 1)
    assert body["message"] == "finished after the deadline 07:30 UTC of the day after 2024-03-05"
    assert sql("SELECT count(*) FROM shop.orders") == [(1,)]


def test_late_deadline() -> None:
    spec = load_spec_text('[alerts]\nlate = "07:30"\n')
    assert late_since(spec, "2024-03-05", datetime(2024, 3, 6, 7, 30, tzinfo=timezone.utc)) is None
    assert late_since(spec, "2024-03-05", datetime(2024, 3, 6, 7, 31, tzinfo=timezone.utc)) == datetime(
        2024, 3, 6, 7, 30, tzinfo=timezone.utc)
    assert late_since(spec, None, datetime(2030, 1, 1, tzinfo=timezone.utc)) is None


def load_spec_text(extra: str) -> Spec:
    return parse_spec(textwrap.dedent(SPEC.format(url="http://127.0.0.1:1", suppress="30min", retries=0))
                      .split("[alerts]")[0] + extra)


def test_bad_alert_settings_are_spec_errors() -> None:
    with pytest.raises(SpecError) as caught:
        load_spec_text('[alerts]\nlate = "25:00"\non = ["failed", "sometimes"]\nsupress = "1h"\n')
    problems = "\n".join(caught.value.problems)
    assert "alerts.late: String should match pattern" in problems
    assert "alerts.on.1: Input should be 'failed', 'rejects', 'anomaly', 'late', 'reconcile', 'recovered' or 'paused'" in problems
    assert "alerts.supress: unknown key (did you mean 'suppress'?)" in problems


def test_masking_and_durations() -> None:
    assert masked("https://hooks.slack.com/services/T0/B0/XXXX") == "https://hooks.slack.com/services/***"
    assert masked("https://user:pw@example.com:8443/hook?token=abc") == "https://example.com:8443/hook?***"
    assert masked("https://example.com") == "https://example.com"
    assert masked("mailto://user:pw@gmail.com") == "mailto://***"
    assert (seconds("30min"), seconds("0.5s"), seconds("2h"), seconds("0")) == (1800.0, 0.5, 7200.0, 0.0)


def test_apprise_target(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    """Any Apprise URL is a target (the `apprise` extra); here its JSON notifier posts to the local receiver."""
    pytest.importorskip("apprise")
    port = receiver.server.server_address[1]
    spec = setup(tmp_path, receiver.url, "Id,Amount\n1,1\n")
    spec.write_text(spec.read_text().replace(f'webhook = "{receiver.url}/hooks/T000/s3cr3t-token"',
                                             f'apprise = ["json://127.0.0.1:{port}/apprise/s3cr3t"]'))
    assert run(spec, db_url) == 2
    (path, body), = receiver.requests
    assert path == "/apprise/s3cr3t"
    assert body["title"] == "pgstage failed: orders"
    assert body["message"].startswith("pgstage failed: orders 2024-03-05 run 1 failed. ")
    assert [r[1:5] for r in ledger(sql)] == [("failed", "json://***", "sent", 1)]


def test_notify_sends_a_summary_as_is_and_records_it(db_url: str, sql: Any, receiver: Receiver,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from pgstage import Notice, notify

    monkeypatch.delenv("PGSTAGE_ALERT_WEBHOOK", raising=False)
    monkeypatch.setenv("PGSTAGE_ALERT_SLACK", receiver.url + "/services/T1/B2/slack-s3cret")
    body = {"event": "day", "status": "failed", "failed_sources": ["stripe_payments"], "ratio": 0.25}
    notice = Notice("summary", "sales_daily", "2024-01-02", body, "sales_daily 2024-01-02: failed")
    webhook = receiver.url + "/hooks/day?token=hook-s3cret"
    masked_hook, masked_slack = receiver.url + "/hooks/***?***", receiver.url + "/services/***"
    sent = [{"event": "summary", "target": masked_hook, "status": "sent", "attempts": 1, "error": None, "recorded": True},
            {"event": "summary", "target": masked_slack, "status": "sent", "attempts": 1, "error": None, "recorded": True}]
    assert notify(notice, db=db_url, webhook=webhook) == sent
    assert receiver.requests == [("/hooks/day?token=hook-s3cret", body),
                                 ("/services/T1/B2/slack-s3cret", {"text": "sales_daily 2024-01-02: failed"})]
    # sent again at once: a summary is never suppressed, whatever the suppression window
    assert notify(notice, db=db_url, webhook=webhook) == sent
    assert sql("SELECT run_id, pipeline, partition, event, target, status, attempts, error, payload"
               " FROM pgstage.alerts ORDER BY alert_id") == 2 * [
        (None, "sales_daily", "2024-01-02", "summary", masked_hook, "sent", 1, None, body),
        (None, "sales_daily", "2024-01-02", "summary", masked_slack, "sent", 1, None, body)]
    # a receiver failing: retried, recorded as failed, and notify still returns
    monkeypatch.delenv("PGSTAGE_ALERT_SLACK")
    receiver.mode = "fail"
    assert notify(notice, db=db_url, webhook=webhook, retries=1) == [
        {"event": "summary", "target": masked_hook, "status": "failed", "attempts": 2, "error": "HTTP 500",
         "recorded": True}]
    assert sql("SELECT status, attempts, error FROM pgstage.alerts ORDER BY alert_id DESC LIMIT 1") == [
        ("failed", 2, "HTTP 500")]
    # a database that cannot be reached: the summary still goes out, unrecorded; record=False records nothing
    receiver.mode = "ok"
    before = len(receiver.requests)
    gone = "postgresql://nobody:db-s3cret@127.0.0.1:1/none?connect_timeout=2"
    assert [(o["status"], o["recorded"]) for o in notify(notice, db=gone, webhook=webhook)] == [("sent", False)]
    assert [(o["status"], o["recorded"]) for o in notify(notice, db=db_url, webhook=webhook, record=False)] == [
        ("sent", False)]
    assert len(receiver.requests) == before + 2
    assert sql("SELECT count(*) FROM pgstage.alerts") == [(5,)]
    # no target at all: nothing sent, nothing recorded
    assert notify(notice, db=db_url) == []
    assert sql("SELECT count(*) FROM pgstage.alerts") == [(5,)]
    logged = capsys.readouterr()
    assert "alert not recorded" in logged.err
    assert not any(s in logged.out + logged.err for s in ("hook-s3cret", "slack-s3cret", "db-s3cret"))


def test_rejects_under_the_threshold_alert_only_above_rejects_above(tmp_path: Path, db_url: str, sql: Any,
                                                                   receiver: Receiver) -> None:
    """1 of 10 records rejected: under max_reject_ratio = 0.2, so merged; by default no alert."""
    csv = "Id,Total\n" + "".join(f"{i},{-i if i == 3 else i}\n" for i in range(1, 11))
    spec = setup(tmp_path, receiver.url, csv)
    assert run(spec, db_url) == 0
    assert receiver.requests == [] and ledger(sql) == []
    # rejects_above = 0.05: 10% is above it -> `rejects`, and the run still succeeded with its rows merged
    spec.write_text(spec.read_text().replace("[alerts]\n", "[alerts]\nrejects_above = 0.05\n"))
    assert run(spec, db_url, "--force") == 0
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    (_, body), = receiver.requests
    assert (body["event"], body["status"], body["run_id"]) == ("rejects", "succeeded", run_id)
    assert body["message"] == ("1 of 10 records rejected (10.0%), above [alerts] rejects_above = 0.05; the valid"
                               " rows were merged (max_reject_ratio = 0.2)")
    assert body["rejects_by_rule"] == {"total.min": 1} and body["rows"]["rejected"] == 1
    assert sql("SELECT count(*) FROM shop.orders") == [(9,)]
    # the same rejects again within the window: suppressed, and no `recovered` beside a `rejects`
    assert run(spec, db_url, "--force") == 0
    assert receiver.events() == ["rejects"]
    assert [r[1:4:2] for r in ledger(sql)] == [("rejects", "sent"), ("rejects", "suppressed")]
    # 10% is not above 0.1: no `rejects`; the ratio is back under the bound, which is a recovery
    spec.write_text(spec.read_text().replace("rejects_above = 0.05", "rejects_above = 0.1"))
    assert run(spec, db_url, "--force") == 0
    assert receiver.events() == ["rejects", "recovered"]


def test_rejects_above_must_be_a_ratio() -> None:
    text = textwrap.dedent(SPEC.format(url="http://127.0.0.1:1", suppress="30min", retries=0))
    with pytest.raises(SpecError) as err:
        parse_spec(text.replace("[alerts]\n", "[alerts]\nrejects_above = 2\n"))
    assert "alerts.rejects_above" in str(err.value)


def test_an_alert_links_the_runs_html_page(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n2,-2\n3,-3\n4,4\n")
    spec.write_text(spec.read_text().replace("[alerts]\n", '[alerts]\nreport_dir = "reports"\n'))
    assert run(spec, db_url) == 3
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    (_, body), = receiver.requests
    page = tmp_path / "reports" / f"run-{run_id}.html"
    assert body["report"] == str(page.resolve())
    html = page.read_text(encoding="utf-8")
    assert f'<span data-field="run_id">{run_id}</span>' in html and 'data-rule="total.min">2<' in html
    assert "s3cr3t" not in html                                  # the webhook's secret is masked on the page too
    # published elsewhere: the link is report_url + the page's name
    spec.write_text(spec.read_text().replace('report_dir = "reports"\n',
                                             'report_dir = "reports"\nreport_url = "https://ops.example/pg/"\n'))
    spec.write_text(spec.read_text().replace('suppress = "30min"', 'suppress = "0s"'))
    assert run(spec, db_url) == 3
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert receiver.requests[1][1]["report"] == f"https://ops.example/pg/run-{run_id}.html"
    assert (tmp_path / "reports" / f"run-{run_id}.html").is_file()


def test_a_report_that_cannot_be_written_leaves_the_alert_and_the_outcome(tmp_path: Path, db_url: str, sql: Any,
                                                                          receiver: Receiver) -> None:
    spec = setup(tmp_path, receiver.url, "Id,Total\n1,1\n2,-2\n3,-3\n4,4\n")
    (tmp_path / "taken").write_text("a file, not a directory")
    spec.write_text(spec.read_text().replace("[alerts]\n", '[alerts]\nreport_dir = "taken"\n'))
    assert run(spec, db_url) == 3                                 # the exit code it has without alerts
    (_, body), = receiver.requests
    assert body["event"] == "rejects" and "report" not in body
    assert [r[1:4:2] for r in ledger(sql)] == [("rejects", "sent")]
