"""Airflow 3: run one pipeline per task, through the library, with pgstage's outcomes as Airflow's.

    PgstageOperator(task_id="load", spec="examples/sales/shopify.toml", db_conn_id="warehouse")

The task's XCom return value is the run report (`RunReport.as_dict()`, the `--json`
document). Outcomes map to what Airflow should do next:

    succeeded, skipped (already loaded)  → success; a skip is logged and is the report's status
    reject threshold (3), anomaly (5)    → failure without retries: the data, not the
    bad spec or usage (2)                  moment, is wrong; retrying cannot help
    pipeline locked (4), anything else   → failure that Airflow's retries apply to (the other
                                           run ends; a database comes back)

A failed run also pushes `pgstage_failure` (which pipeline, exit code, pgstage's message,
the report when there is one), so a notification task with `trigger_rule="all_done"` can
say which source failed. `day_summary` builds that notification and `notify_day` sends it
through pgstage's alert channel (recorded in pgstage.alerts).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgstage import (MissingDependency, Notice, PgstageError, RunReport, UsageError, connection_env, load_spec, notify,
                     run)

try:
    from airflow.sdk import BaseHook, BaseOperator, Variable
    from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException
    from airflow.sdk.log import mask_secret
except ImportError as exc:  # pragma: no cover - exercised where Airflow is absent
    raise MissingDependency("the Airflow integration needs Apache Airflow 3",
                            hint='pip install "pgstage[airflow]"') from exc

__all__ = ["FAILURE_KEY", "PgstageOperator", "airflow_error", "connection_url", "day_summary", "dbt_env", "deliver",
           "empty_sources", "notify_day", "pull_mapped", "webhook_url"]

FAILURE_KEY = "pgstage_failure"
WEBHOOK_VARIABLE = "pgstage_alert_webhook"
WEBHOOK_ENV = "PGSTAGE_ALERT_WEBHOOK"
DATABASE_ENV = "PGSTAGE_DATABASE_URL"
# Exit codes after which a retry would meet the same data or the same spec (SPEC §6).
NO_RETRY = frozenset({2, 3, 5})
# libpq settings an Airflow connection's extra may carry; anything else there (a provider's
# cursor or driver options) is not for libpq and is left out.
_LIBPQ_EXTRAS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "connect_timeout", "options",
                 "application_name", "target_session_attrs", "keepalives", "keepalives_idle")


def connection_url(conn_id: str) -> str:
    """A libpq connection string from an Airflow connection (host, port, schema = database, login)."""
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise UsageError(f"Airflow connection {conn_id!r} is not defined",
                         hint=f"airflow connections add {conn_id} --conn-type postgres ..., or leave db_conn_id unset"
                              " to use PGSTAGE_DATABASE_URL") from None
    if conn.conn_type not in ("postgres", "postgresql"):
        raise UsageError(f"Airflow connection {conn_id!r} is of type {conn.conn_type!r}, not postgres",
                         hint="create it with conn_type postgres (host, port, schema = database, login, password)")
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    params: dict[str, Any] = {"host": conn.host, "port": conn.port, "dbname": conn.schema, "user": conn.login,
                              "password": conn.password}
    params.update((k, extra[k]) for k in _LIBPQ_EXTRAS if k in extra)
    return make_conninfo("", **{k: v for k, v in params.items() if v not in (None, "")})


def dbt_env(conn_id: str | None) -> dict[str, str]:
    """libpq's variables for the database the loads used, for a dbt profiles.yml that reads them.

    The same resolution as the operator: the Airflow connection `conn_id`, else
    $PGSTAGE_DATABASE_URL, else pgstage's embedded server. Unlike `pgstage db env`, which never
    prints a password, this adds PGPASSWORD when the connection has one: the result is meant for
    a dbt subprocess's environment only, never for a command line or a log line (Airflow masks a
    connection's password in task logs once the connection is read).
    """
    url = connection_url(conn_id) if conn_id else os.environ.get(DATABASE_ENV) or None
    variables = connection_env(url)
    password = conninfo_to_dict(url).get("password") if url else None
    if password:
        variables["PGPASSWORD"] = str(password)
    return variables


class PgstageOperator(BaseOperator):
    """Load one (pipeline, partition) with `pgstage.run`; the report is the XCom return value.

    `spec`, `partition`, `base_dir` and `db_conn_id` are templated, so `partition` defaults to
    the run's logical date (`{{ ds }}`) and a DAG can map one operator over many specs.
    Without `db_conn_id` the URL comes from the environment (`PGSTAGE_DATABASE_URL`).
    Retries default to 3, five minutes apart: they are what a held lock (exit 4) waits on.
    """

    template_fields: Sequence[str] = ("spec", "partition", "base_dir", "db_conn_id")
    ui_color = "#dbe8f5"

    def __init__(self, *, spec: str, partition: str | None = "{{ ds }}", db_conn_id: str | None = None,
                 base_dir: str | None = None, force: bool = False, retries: int = 3,
                 retry_delay: timedelta = timedelta(minutes=5), **kwargs: Any) -> None:
        super().__init__(retries=retries, retry_delay=retry_delay, **kwargs)
        self.spec = spec
        self.partition = partition
        self.db_conn_id = db_conn_id
        self.base_dir = base_dir
        self.force = force

    def execute(self, context: Any) -> dict[str, Any]:
        try:
            url = connection_url(self.db_conn_id) if self.db_conn_id else None
            report = run(self.spec, partition=self.partition or None, db=url,
                         base_dir=Path(self.base_dir) if self.base_dir else None, force=self.force)
        except PgstageError as exc:
            failure = self._failure(exc)
            context["ti"].xcom_push(key=FAILURE_KEY, value=failure)
            raise airflow_error(exc, failure["pipeline"] or str(self.spec)) from None
        if report.status == "skipped":
            self.log.warning("pgstage: %s %s skipped: %s", report.pipeline, report.partition, report.message)
        else:
            self.log.info("pgstage: %s %s %s: %s", report.pipeline, report.partition, report.status,
                          json.dumps(report.counts.as_dict()))
        return report.as_dict()

    def _failure(self, exc: PgstageError) -> dict[str, Any]:
        """What the notification needs to name the failed source, JSON-ready."""
        report: RunReport | None = getattr(exc, "report", None)   # a reject threshold carries its report
        return {"spec": str(self.spec), "pipeline": report.pipeline if report else self._pipeline_name(),
                "partition": self.partition, "exit_code": int(exc.exit_code), "message": str(exc),
                "report": report.as_dict() if report else None}

    def _pipeline_name(self) -> str | None:
        try:
            return load_spec(self.spec).pipeline.name
        except (PgstageError, OSError):
            return None


def airflow_error(exc: PgstageError, pipeline: str) -> AirflowException:
    """pgstage's failure as the Airflow exception that makes Airflow retry it, or not."""
    message = f"{pipeline}: {exc}"
    return AirflowFailException(message) if exc.exit_code in NO_RETRY else AirflowException(message)


def pull_mapped(ti: Any, task_id: str, key: str = "return_value") -> list[Any]:
    """Every XCom a mapped task pushed under key, as a list.

    Airflow's `xcom_pull` returns a mapped task's values as a list, except when exactly one
    of its instances pushed one: then it is the bare value. A day with one failed feed is that case.
    """
    found = ti.xcom_pull(task_ids=task_id, key=key)
    if found is None:
        return []
    return [found] if isinstance(found, dict) or not isinstance(found, Iterable) or isinstance(found, str) else list(found)


def empty_sources(reports: Iterable[Mapping[str, Any]]) -> list[str]:
    """Pipelines whose run loaded and read zero records: an export that came out empty.

    A skipped run (these bytes were loaded by an earlier run) is not empty: its rows were counted then.
    """
    return sorted(r["pipeline"] for r in reports if r["status"] != "skipped" and r["rows"]["read"] == 0)


def day_summary(*, dag_id: str, run_id: str, partition: str | None, reports: Iterable[Mapping[str, Any]],
                failures: Iterable[Mapping[str, Any]], task_states: Mapping[str, str]) -> dict[str, Any]:
    """The day's notification: one line per source, the failed ones named, every task's state."""
    sources = [{"pipeline": r["pipeline"], "status": r["status"], "rows": r["rows"], "message": r["message"]}
               for r in reports]
    failed = [{"pipeline": f["pipeline"] or f["spec"], "exit_code": f["exit_code"], "message": f["message"],
               "rows": f["report"]["rows"] if f["report"] else None} for f in failures]
    bad_tasks = sorted(t for t, state in task_states.items() if state in ("failed", "upstream_failed"))
    return {
        "event": "pgstage.airflow.day",
        "status": "failed" if failed or bad_tasks else "succeeded",
        "dag_id": dag_id,
        "run_id": run_id,
        "partition": partition,
        "failed_sources": sorted(str(f["pipeline"]) for f in failed),
        "sources": sources + [{"pipeline": f["pipeline"], "status": "failed", "rows": f["rows"],
                               "message": f["message"]} for f in failed],
        "failed_tasks": bad_tasks,
        "tasks": dict(sorted(task_states.items())),
    }


def webhook_url() -> str | None:
    """The webhook to notify: the Airflow Variable `pgstage_alert_webhook`, else $PGSTAGE_ALERT_WEBHOOK."""
    return Variable.get(WEBHOOK_VARIABLE, default=None) or os.environ.get(WEBHOOK_ENV) or None


def day_text(summary: Mapping[str, Any]) -> str:
    """The summary in one line, for Slack and Apprise targets."""
    line = f"{summary['dag_id']} {summary['partition']}: {summary['status']}"
    if summary["failed_sources"]:
        line += f"; failed sources: {', '.join(summary['failed_sources'])}"
    if summary["failed_tasks"]:
        line += f"; failed tasks: {', '.join(summary['failed_tasks'])}"
    loaded = [f"{s['pipeline']} {s['status']}" + (f" ({s['rows']['read']:,} read)" if s.get("rows") else "")
              for s in summary["sources"] if s["status"] != "failed"]
    return line + (f"; {', '.join(loaded)}" if loaded else "") + f" (run {summary['run_id']})"


def notify_day(summary: Mapping[str, Any], conn_id: str | None = None) -> list[dict[str, Any]]:
    """Send the day's summary through pgstage's alert channel; what each target got. Raises when none got it.

    The targets are the Airflow Variable `pgstage_alert_webhook` and pgstage's own
    PGSTAGE_ALERT_WEBHOOK / PGSTAGE_ALERT_SLACK; each delivery is recorded in the `pgstage.alerts`
    of the database the loads used (`conn_id`, else $PGSTAGE_DATABASE_URL), event `summary`,
    pipeline = the DAG id. With no target the list is empty. When every target failed the task
    fails, so Airflow retries it: a summary nobody received is not done.
    """
    variable = Variable.get(WEBHOOK_VARIABLE, default=None) or None
    if variable:
        mask_secret(variable)           # a Variable is not masked by Airflow unless its name looks secret
    db: str | None = None
    try:
        db = connection_url(conn_id) if conn_id else os.environ.get(DATABASE_ENV) or None
    except PgstageError as exc:         # still notify; only the record is lost, and the log says why
        print(f"the summary is not recorded in pgstage.alerts: {exc}")
    notice = Notice("summary", str(summary["dag_id"]), summary.get("partition"), summary, day_text(summary))
    outcomes = notify(notice, db=db, webhook=variable, record=db is not None)
    if outcomes and all(o["status"] == "failed" for o in outcomes):
        raise AirflowException("the day's summary reached no target: "
                               + "; ".join(f"{o['target']}: {o['error']}" for o in outcomes))
    return outcomes


def deliver(payload: Mapping[str, Any], url: str | None = None, *, timeout_s: float = 10.0) -> bool:
    """POST the payload as JSON; False when no webhook is configured. Raises AirflowException on failure.

    A bare post, recorded nowhere: for a DAG with no pgstage database. `notify_day` is the
    notification the sales DAG sends. The URL may hold a secret token, so only its host is logged.
    """
    url = url or webhook_url()
    if not url:
        return False
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise AirflowFailException(f"the notification webhook must be an http(s) URL, not {parts.scheme or 'none'}://")
    request = urllib.request.Request(url, data=json.dumps(payload, default=str).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "pgstage-airflow"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - scheme checked above
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = exc.code if isinstance(exc, urllib.error.HTTPError) else type(exc).__name__
        raise AirflowException(f"posting the notification to {parts.hostname} failed: {reason}") from None
    return True
