"""A backfill whose forecast passes its deadline sends `late` once, through its specs' alert targets,
to a real HTTP receiver on 127.0.0.1; the fake clock of tests/test_backfill.py makes each unit seem
to take an hour."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pgstage
from pgstage.backfill.late import send_late
from tests.test_backfill import START, make_data, specs
from tests.test_ops_alerts import Receiver, receiver  # noqa: F401 (the fixture)


def with_alerts(root: Path, lines: dict[str, str]) -> None:
    for name, text in lines.items():
        path = root / f"{name}.toml"
        path.write_text(path.read_text() + f"\n[alerts]\n{text}\n")


def hourly_clock() -> Any:
    ticks = iter(range(0, 10**6, 3600))
    return lambda: float(next(ticks))


def test_a_late_forecast_sends_late_once_per_backfill(tmp_path: Path, db_url: str, sql: Any,
                                                      receiver: Receiver) -> None:
    make_data(tmp_path, days=2)
    with_alerts(tmp_path, {name: f'webhook = "{receiver.url}/hooks/T0/s3cr3t"' for name in ("alpha", "beta", "gamma")})
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=1), db=db_url,
                              deadline=datetime.now().astimezone() + timedelta(hours=1), clock=hourly_clock())
    assert len(report.warnings) == 1
    # Six units, each one late by the forecast: one alert, for the three specs sharing one webhook.
    assert receiver.events() == ["late"]
    path, body = receiver.requests[0]
    assert path == "/hooks/T0/s3cr3t"
    assert body == {"event": "late", "pipeline": "alpha, beta, gamma", "partition": None, "run_id": None,
                    "status": "running", "rows": {}, "rejects_by_rule": {},
                    "message": f"backfill {report.backfill_id}: {report.warnings[0]}",
                    "host": socket.gethostname(), "more": "pgstage runs"}
    assert sql("SELECT run_id, pipeline, partition, event, target, status, attempts FROM pgstage.alerts") == [
        (None, "alpha, beta, gamma", None, "late", f"{receiver.url}/hooks/***", "sent", 1)]
    # Another process of the same backfill (--join) finds it delivered and sends nothing.
    assert send_late(db_url, report.backfill_id, [pgstage.load_spec(p) for p in specs(tmp_path)], "late again") == []
    assert len(receiver.requests) == 1
    assert report.counts.inserted + report.counts.updated > 0 and sql("SELECT count(*) FROM pgstage.runs") == [(6,)]


def test_specs_with_different_targets_each_hear_it_and_on_time_sends_nothing(tmp_path: Path, db_url: str, sql: Any,
                                                                             receiver: Receiver) -> None:
    make_data(tmp_path, days=1)
    with_alerts(tmp_path, {"alpha": f'webhook = "{receiver.url}/a"', "beta": f'webhook = "{receiver.url}/b"',
                           "gamma": f'webhook = "{receiver.url}/c"\non = ["failed"]'})   # gamma does not want late
    on_time = pgstage.backfill(specs(tmp_path), start=START, end=START, db=db_url,
                               deadline=datetime.now().astimezone() + timedelta(days=2), clock=hourly_clock())
    assert on_time.warnings == () and receiver.requests == []
    late = pgstage.backfill(specs(tmp_path), start=START + timedelta(days=1), end=START + timedelta(days=1),
                            db=db_url, deadline=datetime.now().astimezone() + timedelta(minutes=30),
                            clock=hourly_clock())
    assert len(late.warnings) == 1
    assert sorted((path, body["pipeline"]) for path, body in receiver.requests) == [("/a", "alpha"), ("/b", "beta")]
    assert sql("SELECT pipeline, status FROM pgstage.alerts ORDER BY pipeline") == [("alpha", "sent"), ("beta", "sent")]


def test_an_unreachable_receiver_does_not_stop_the_backfill(tmp_path: Path, db_url: str, sql: Any) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    make_data(tmp_path, days=1)
    with_alerts(tmp_path, {"alpha": f'webhook = "http://127.0.0.1:{port}/x"\nretries = 0\ntimeout = "0.5s"'})
    report = pgstage.backfill(specs(tmp_path), start=START, end=START, db=db_url,
                              deadline=datetime.now().astimezone() + timedelta(minutes=30), clock=hourly_clock())
    assert report.units["succeeded"] == 3 and len(report.warnings) == 1
    assert sql("SELECT event, status, left(error, 12) FROM pgstage.alerts") == [("late", "failed", "unreachable:")]
