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
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql
from tenacity import Retrying, stop_after_attempt, wait_exponential

from pgstage.db import execute
from pgstage.ops import logs
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
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pgstage"})
    with urllib.request.urlopen(request, timeout=timeout) as response:   # noqa: S310 (http(s) only, checked by caller)
        if response.status >= 300:
            raise OSError(f"HTTP {response.status}")


def _apprise(url: str, alert: Alert) -> None:
    try:
        import apprise  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise OSError('Apprise URLs need the apprise extra: pip install "pgstage[apprise]"') from None
    notifier = apprise.Apprise()
    if not notifier.add(url) or not notifier.notify(title=f"pgstage {alert.event}: {alert.pipeline}", body=alert.text()):
        raise OSError("apprise could not deliver the notification")


def _deliver(target: Target, alert: Alert, timeout: float) -> None:
    if target.kind == "apprise":
        _apprise(target.url, alert)
        return
    if urlsplit(target.url).scheme not in ("http", "https"):
        raise OSError("not an http(s) URL")
    _post(target.url, alert.slack() if target.kind == "slack" else alert.payload(), timeout)


def _describe(exc: BaseException) -> str:
    """The failure in a few words, without the URL (urllib puts it in some messages)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return logs.redact(f"unreachable: {exc.reason}")
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timed out"
    return logs.redact(f"{type(exc).__name__}: {exc}")


def send(conn: psycopg.Connection[Any], section: AlertsSection, alert: Alert) -> list[dict[str, Any]]:
    """Deliver one alert to every target (unless suppressed) and record each outcome; never raises.

    Returns what was recorded, for the caller's log and tests.
    """
    if alert.event not in section.on:
        return []
    outcomes: list[dict[str, Any]] = []
    window, timeout = seconds(section.suppress), seconds(section.timeout)
    for target in targets(section):
        where = masked(target.url)
        status, attempts, error = "sent", 0, None
        recent = execute(conn, build_recent_send(), {"pipeline": alert.pipeline, "event": alert.event,
                                                     "target": where, "window": window},
                         label="alerts: suppressed?").fetchone()
        if alert.event != "recovered" and recent and recent[0]:
            status = "suppressed"
        else:
            try:
                for attempt in Retrying(stop=stop_after_attempt(section.retries + 1),
                                        wait=wait_exponential(multiplier=0.2, max=2), reraise=True):
                    with attempt:
                        attempts += 1
                        _deliver(target, alert, timeout)
            except Exception as exc:   # delivery never changes the run's outcome
                status, error = "failed", _describe(exc)
        execute(conn, build_record(), (alert.run_id, alert.pipeline, alert.partition, alert.event, where, status,
                                       attempts, error, json.dumps(alert.payload())), label="alerts: record")
        outcome = {"event": alert.event, "target": where, "status": status, "attempts": attempts, "error": error}
        logs.emit("alert failed" if status == "failed" else "alert " + status, run_id=alert.run_id,
                  pipeline=alert.pipeline, partition=alert.partition, **{k: v for k, v in outcome.items() if k != "event"},
                  alert=alert.event)
        outcomes.append(outcome)
    return outcomes
