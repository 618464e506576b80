"""The `paused` alert: a throttle pause has lasted longer than `[alerts] paused_after`.

A paused run has not failed and may still finish, but a replica stuck for minutes or a
month-end freeze that nobody lifts needs a person; the alert says so before
`throttle_timeout` ends the run. Sent from the paused session itself (it holds no transaction
then), once per run attempt; like every alert, delivery never changes the run's outcome.
"""

from __future__ import annotations

from typing import Any

import psycopg

from pgstage.errors import PgstageError
from pgstage.ops import alerts, logs
from pgstage.spec import Spec
from pgstage.throttle import LongPause, Pressure


def long_pause_alert(spec: Spec, run_id: int | None, partition: str | None) -> LongPause | None:
    """The throttle's callback for this run, or None when no target would hear it."""
    if "paused" not in spec.alerts.on or not alerts.targets(spec.alerts):
        return None

    def send(conn: psycopg.Connection[Any], pressure: Pressure, waited: float) -> None:
        message = (f"paused for {waited:.0f} s so far (longer than paused_after = {spec.alerts.paused_after}):"
                   f" {pressure.detail}; the run resumes by itself when the pressure falls below half its limit"
                   f" and fails after throttle_timeout = {spec.load.throttle_timeout}")
        try:
            alerts.send(conn, spec.alerts, alerts.Alert("paused", spec.pipeline.name, partition, run_id, "paused",
                                                        {}, {}, message))
        except (PgstageError, psycopg.Error, OSError) as exc:   # the ledger's insert failed: the run goes on
            logs.emit("alert failed", run_id=run_id, pipeline=spec.pipeline.name, partition=partition,
                      error=logs.redact(str(exc)), alert="paused")
    return send
