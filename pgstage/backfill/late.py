"""The backfill's `late` alert (SPEC §9): the forecast says it will finish after its deadline.

A backfill has no run of its own, so the alert is sent through the alert targets of its specs:
once to each distinct set of targets (three specs posting to one webhook page once), naming
every pipeline that shares it. Once per backfill: a process sends it at most once, and not at
all when `pgstage.alerts` already holds a delivered `late` alert of this backfill (another
machine that joined it sent it first). Delivery never stops the backfill.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import connect, execute
from pgstage.errors import PgstageError
from pgstage.ops import alerts, logs
from pgstage.spec import AlertsSection, Spec


def prefix(backfill_id: int) -> str:
    """How a backfill's alert message begins; the ledger is searched by it."""
    return f"backfill {backfill_id}: "


def build_sent_before() -> sql.Composed:
    """Did any process deliver this backfill's `late` alert already? (pure)"""
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM pgstage.alerts WHERE event = 'late' AND status = 'sent'"
                   " AND starts_with(payload->>'message', %s))").format()


def groups(specs: Sequence[Spec]) -> list[tuple[AlertsSection, list[str]]]:
    """The specs' alert sections that want `late`, one per distinct set of targets, with their pipelines."""
    found: dict[frozenset[alerts.Target], tuple[AlertsSection, list[str]]] = {}
    for spec in specs:
        targets = frozenset(alerts.targets(spec.alerts))
        if targets and "late" in spec.alerts.on:
            found.setdefault(targets, (spec.alerts, []))[1].append(spec.pipeline.name)
    return list(found.values())


def send_late(url: str, backfill_id: int, specs: Sequence[Spec], warning: str) -> list[dict[str, Any]]:
    """Send the forecast's warning as `late`; returns what was recorded (empty when nothing was sent)."""
    wanted = groups(specs)
    if not wanted:
        return []
    outcomes: list[dict[str, Any]] = []
    try:
        with connect(url) as conn:
            row = execute(conn, build_sent_before(), (prefix(backfill_id),), label="backfill: late sent?").fetchone()
            if row and row[0]:
                return []
            for section, pipelines in wanted:
                alert = alerts.Alert("late", ", ".join(pipelines), None, None, "running", {}, {},
                                     prefix(backfill_id) + warning)
                outcomes += alerts.send(conn, section, alert)
    except (PgstageError, psycopg.Error, OSError) as exc:   # the ledger is unreachable: the backfill goes on
        logs.emit("alert failed", pipeline=", ".join(p for _, ps in wanted for p in ps), alert="late",
                  backfill_id=backfill_id, error=logs.redact(str(exc)))
    return outcomes
