"""Alerts: tell people when a run failed, rejected too much, looked anomalous, was late, or recovered.

Targets come from `[alerts]` or from PGSTAGE_ALERT_WEBHOOK / PGSTAGE_ALERT_SLACK, so a URL
holding a secret need not live in the spec. Delivery is retried briefly (tenacity) and never
changes a run's outcome: every error is caught and recorded. Each attempt lands in
`pgstage.alerts` with the URL's secret masked.

Suppression: the same (pipeline, event, target) is not sent again within `suppress` of its
last successful send, so a pipeline failing every 5 minutes pages once. `recovered` is sent
by the first succeeded run after a `failed` or `rejects` alert (sent or suppressed).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from tenacity import Retrying, stop_after_attempt, wait_exponential

from pgstage.db import connect, execute, resolve_url
from pgstage.errors import PgstageError
from pgstage.ops import logs
from pgstage.pipeline import ledger
from pgstage.spec import AlertsSection

ENV_WEBHOOK = "PGSTAGE_ALERT_WEBHOOK"
ENV_SLACK = "PGSTAGE_ALERT_SLACK"
TROUBLE = ("failed", "rejects")           # events a later success recovers from
_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*$")


def seconds(text: str) -> float:
    """A spec duration ("30min", "5s", "0") in seconds; the spec's pattern already checked it."""
    found = _DURATION.match(text)
    if not found:
        raise ValueError(f"not a duration: {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def masked(url: str) -> str:
    """What the ledger and logs may say about a target: scheme, host, the path's first part, no secret."""
    parts = urlsplit(url)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        segments = [s for s in parts.path.split("/") if s]
        path = ("/" + segments[0] + ("/***" if len(segments) > 1 else "")) if segments else ""
        return f"{parts.scheme}://{host}{path}" + ("?***" if parts.query else "")
    return (parts.scheme or "apprise") + "://***"


@dataclass(frozen=True)
class Target:
    kind: str          # webhook | slack | apprise
    url: str


def targets(section: AlertsSection) -> list[Target]:
    """The spec's targets and the environment's, each once; registered as secrets for the logs."""
    found = [Target("webhook", u) for u in (section.webhook, os.environ.get(ENV_WEBHOOK)) if u]
    found += [Target("slack", u) for u in (section.slack, os.environ.get(ENV_SLACK)) if u]
    found += [Target("apprise", u) for u in section.apprise]
    unique = list(dict.fromkeys(found))
    for target in unique:
        logs.secret(target.url)
    return unique


@dataclass(frozen=True)
class Alert:
    """What happened, for every target's format alike."""

    event: str
    pipeline: str
    partition: str | None
    run_id: int | None
    status: str
    rows: dict[str, int]
    rejects_by_rule: dict[str, int]
    message: str
    report: str | None = None        # the run's HTML page: its URL under [alerts] report_url, else its path

    def payload(self) -> dict[str, Any]:
        """The generic JSON document a webhook receives."""
        return {
            "event": self.event,
            "pipeline": self.pipeline,
            "partition": self.partition,
            "run_id": self.run_id,
            "status": self.status,
            "rows": dict(self.rows),
            "rejects_by_rule": dict(self.rejects_by_rule),
            "message": self.message,
            "host": socket.gethostname(),
            "more": f"pgstage show {self.run_id}" if self.run_id is not None else "pgstage runs",
            **({"report": self.report} if self.report else {}),
        }

    def text(self) -> str:
        where = self.pipeline + (f" {self.partition}" if self.partition else "")
        rows = self.rows
        counts = (f" — read {rows.get('read', 0):,}, rejected {rows.get('rejected', 0):,},"
                  f" inserted {rows.get('inserted', 0):,}, updated {rows.get('updated', 0):,}") if rows else ""
        more = f" (`pgstage show {self.run_id}`)" if self.run_id is not None else ""
        if self.report:
            more += f" report: {self.report}"
        return f"pgstage {self.event}: {where} run {self.run_id} {self.status}{counts}. {self.message}{more}"

    def slack(self) -> dict[str, Any]:
        """Slack's incoming-webhook format: a `text`, shown as is."""
        return {"text": self.text()}


@dataclass(frozen=True)
class Notice:
    """A summary someone else composed (an orchestrator's day over several runs), sent as it is.

    Same targets, masking and ledger as an `Alert`; `body` is the webhook's JSON document and
    `summary` the one line Slack and Apprise show.
    """

    event: str                    # what it is in pgstage.alerts, e.g. "summary"
    pipeline: str                 # who speaks: the DAG or job, in pgstage.alerts' pipeline column
    partition: str | None
    body: Mapping[str, Any]
    summary: str
    run_id: int | None = None

    def payload(self) -> dict[str, Any]:
        return dict(self.body)

    def text(self) -> str:
        return self.summary

    def slack(self) -> dict[str, Any]:
        return {"text": self.summary}


# --- the ledger -------------------------------------------------------------------------------------


def build_recent_send() -> sql.Composed:
    """Was this (pipeline, event, target) sent within the window? (pure)"""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pgstage.alerts WHERE pipeline = %(pipeline)s AND event = %(event)s"
                   " AND target = %(target)s AND status = 'sent'"
                   " AND created_at > clock_timestamp() - make_interval(secs => %(window)s))").format()


def build_needs_recovery() -> sql.Composed:
    """Is the pipeline's latest trouble alert newer than its latest `recovered`? (pure)"""
    return sql.SQL("SELECT coalesce(max(alert_id) FILTER (WHERE event = ANY(%(trouble)s)), 0)"
                   " > coalesce(max(alert_id) FILTER (WHERE event = 'recovered'), 0)"
                   " FROM pgstage.alerts WHERE pipeline = %(pipeline)s").format()


def build_record() -> sql.Composed:
    return sql.SQL("INSERT INTO pgstage.alerts (run_id, pipeline, partition, event, target, status, attempts, error,"
                   " payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)").format()


def needs_recovery(conn: psycopg.Connection[Any], pipeline: str) -> bool:
    row = execute(conn, build_needs_recovery(), {"pipeline": pipeline, "trouble": list(TROUBLE)},
                  label="alerts: recovery?").fetchone()
    return bool(row and row[0])


# --- delivery ---------------------------------------------------------------------------------------


def _post(url: str, body: dict[str, Any], timeout: float) -> None:
    import urllib.request   # http.client and friends: only a run that sends an alert needs them

    request = urllib.request.Request(url, data=json.dumps(body, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pgstage"})
    with urllib.request.urlopen(request, timeout=timeout) as response:   # noqa: S310 (http(s) only, checked by caller)
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")


def _apprise(url: str, alert: Alert | Notice) -> None:
    try:
        import apprise  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise OSError('Apprise URLs need the apprise extra: pip install "pgstage[apprise]"') from None
    notifier = apprise.Apprise()
    if not notifier.add(url) or not notifier.notify(title=f"pgstage {alert.event}: {alert.pipeline}", body=alert.text()):
        raise OSError("apprise could not deliver the notification")


def _deliver(target: Target, alert: Alert | Notice, timeout: float) -> None:
    if target.kind == "apprise":
        _apprise(target.url, alert)
        return
    if urlsplit(target.url).scheme not in ("http", "https"):
        raise OSError("not an http(s) URL")
    _post(target.url, alert.slack() if target.kind == "slack" else alert.payload(), timeout)


def _describe(exc: BaseException) -> str:
    """The failure in a few words, without the URL (urllib puts it in some messages)."""
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return logs.redact(f"unreachable: {exc.reason}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return logs.redact(f"{type(exc).__name__}: {exc}")


def _attempt(target: Target, alert: Alert | Notice, section: AlertsSection) -> tuple[str, int, str | None]:
    """Deliver to one target with the section's retries: (status, attempts, error); never raises."""
    attempts = 0
    try:
        for attempt in Retrying(stop=stop_after_attempt(section.retries + 1),
                                wait=wait_exponential(multiplier=0.2, max=2), reraise=True):
            with attempt:
                attempts += 1
                _deliver(target, alert, seconds(section.timeout))
    except Exception as exc:   # delivery never changes the run's outcome
        return "failed", attempts, _describe(exc)
    return "sent", attempts, None


def _record(conn: psycopg.Connection[Any], alert: Alert | Notice, outcome: dict[str, Any]) -> None:
    execute(conn, build_record(), (alert.run_id, alert.pipeline, alert.partition, alert.event, outcome["target"],
                                   outcome["status"], outcome["attempts"], outcome["error"],
                                   json.dumps(alert.payload(), default=str)), label="alerts: record")


def _log(alert: Alert | Notice, outcome: dict[str, Any]) -> None:
    logs.emit("alert failed" if outcome["status"] == "failed" else "alert " + outcome["status"], run_id=alert.run_id,
              pipeline=alert.pipeline, partition=alert.partition,
              **{k: v for k, v in outcome.items() if k != "event"}, alert=alert.event)


def send(conn: psycopg.Connection[Any], section: AlertsSection, alert: Alert) -> list[dict[str, Any]]:
    """Deliver one alert to every target (unless suppressed) and record each outcome; never raises.

    Returns what was recorded, for the caller's log and tests.
    """
    if alert.event not in section.on:
        return []
    outcomes: list[dict[str, Any]] = []
    window = seconds(section.suppress)
    for target in targets(section):
        where = masked(target.url)
        recent = execute(conn, build_recent_send(), {"pipeline": alert.pipeline, "event": alert.event,
                                                     "target": where, "window": window},
                         label="alerts: suppressed?").fetchone()
        if alert.event != "recovered" and recent and recent[0]:
            status, attempts, error = "suppressed", 0, None
        else:
            status, attempts, error = _attempt(target, alert, section)
        outcome = {"event": alert.event, "target": where, "status": status, "attempts": attempts, "error": error}
        _record(conn, alert, outcome)
        _log(alert, outcome)
        outcomes.append(outcome)
    return outcomes


def notify(notice: Notice, *, db: str | None = None, webhook: str | None = None, slack: str | None = None,
           timeout: str = "10s", retries: int = 2, record: bool = True) -> list[dict[str, Any]]:
    """Send a summary to the alert targets (these and PGSTAGE_ALERT_WEBHOOK / _SLACK) and record it in pgstage.alerts.

    For an orchestrator's summary of a day (several runs), not a run's own alert: it is sent
    whatever `[alerts] on` says, and never suppressed, since each summary is news. It is
    delivered before it is recorded, so a database that is down (often the very reason a day
    failed) still gets its notification out; the outcome then says `recorded: False`.
    Never raises; each outcome says whether its target got it.
    """
    section = AlertsSection(webhook=webhook, slack=slack, timeout=timeout, retries=retries)
    outcomes: list[dict[str, Any]] = []
    for target in targets(section):
        status, attempts, error = _attempt(target, notice, section)
        outcomes.append({"event": notice.event, "target": masked(target.url), "status": status,
                         "attempts": attempts, "error": error})
    if not outcomes:
        return outcomes
    recorded = _record_all(db, notice, outcomes) if record else False
    for outcome in outcomes:
        outcome["recorded"] = recorded
        _log(notice, outcome)
    return outcomes


def _record_all(db: str | None, notice: Notice, outcomes: list[dict[str, Any]]) -> bool:
    """Record a notice's outcomes; False (and a log line) when the database cannot take them."""
    try:
        with connect(resolve_url(db)) as conn:
            ledger.ensure(conn)
            for outcome in outcomes:
                _record(conn, notice, outcome)
    except (PgstageError, psycopg.Error, OSError) as exc:
        logs.emit("alert not recorded", pipeline=notice.pipeline, partition=notice.partition,
                  error=logs.redact(str(exc)))
        return False
    return True
