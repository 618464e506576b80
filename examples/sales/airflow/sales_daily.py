"""The daily sales load: three exports into sales.orders, volume check, dbt, a notification.

Every day at 02:00 UTC this DAG loads the previous day's exports (the run for logical date D
loads partition D - 1, a day that is over), one pgstage run per feed, fanned out by dynamic
task mapping over the specs beside this folder (examples/sales/*.toml). Then:

    feeds ─▶ load[shopify, stripe, woocommerce] ─▶ check_volumes ─▶ dbt_build ─┐
                           │                                                   ├─▶ notify (all_done)
                           └─────────────── day_failed (one_failed) ◀──────────┘

- `catchup=True` backfills every missed day from `start_date`; `max_active_runs=1` makes
  those days load one at a time, in order: the three feeds merge into one table by
  `upsert`, so a later day must never be overwritten by an earlier one finishing last.
- A load's outcome is pgstage's: too many rejects (exit 3) fails it without retries; a
  held lock (exit 4) is retried. The report is the task's XCom.
- `check_volumes` fails when a feed read zero records (an empty export is an incident).
- `dbt_build` builds `examples/sales/dbt` after the loads, in the same database (the profile
  reads libpq's PG* variables, set from the loads' connection); it is skipped when the project
  or the `dbt` command is not there.
- `notify` runs whatever happened and sends the day's summary, naming the failed sources,
  through pgstage's alert channel: the webhook in the Airflow Variable `pgstage_alert_webhook`
  and pgstage's $PGSTAGE_ALERT_WEBHOOK / $PGSTAGE_ALERT_SLACK, each delivery recorded in the
  warehouse's pgstage.alerts (logged only when no target is set).
- `day_failed` marks the DAG run failed when anything failed: `notify` succeeding after a
  failed load must not make the day look green.

Settings (environment): PGSTAGE_SALES_CONN_ID, the Airflow connection of the warehouse
(default `pgstage_sales`); PGSTAGE_SALES_DATA_DIR, where `data/<source>/orders_<day>.csv`
live (default: examples/sales, as `pgstage demo` lays them out).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from pgstage import load_spec
from pgstage.integrations.airflow import (FAILURE_KEY, PgstageOperator, day_summary, dbt_env, empty_sources, notify_day,
                                          pull_mapped)

SALES = Path(__file__).resolve().parents[1]          # examples/sales: the specs and the dbt project
DATA_DIR = os.environ.get("PGSTAGE_SALES_DATA_DIR", str(SALES))
CONN_ID = os.environ.get("PGSTAGE_SALES_CONN_ID", "pgstage_sales")
DBT_PROJECT = SALES / "dbt"
ORDERS = "sales.orders"                               # the table the day's feeds load and dbt reads

with DAG(
    dag_id="sales_daily",
    # 02:00 UTC, once the day's exports are in. A trigger timetable, named rather than left to
    # [scheduler] create_cron_data_intervals: the logical date is the moment the run fires.
    schedule=CronTriggerTimetable("0 2 * * *", timezone="UTC"),
    start_date=datetime(2024, 1, 2, tzinfo=timezone.utc),
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    tags=["pgstage", "sales"],
    doc_md=__doc__,
) as dag:

    @task
    def feeds() -> list[str]:
        """The specs loading sales.orders, the table dbt builds on; a new export is a new .toml beside them.

        Other specs in the folder (stripe_history.toml keeps the payments' scd2 history in
        sales.payment_history) are not this day's orders and are left to their own DAG.
        """
        return [str(p) for p in sorted(SALES.glob("*.toml")) if load_spec(p).pipeline.target == ORDERS]

    load = PgstageOperator.partial(
        task_id="load",
        partition="{{ macros.ds_add(ds, -1) }}",
        db_conn_id=CONN_ID,
        base_dir=DATA_DIR,
        map_index_template="{{ task.spec.rsplit('/', 1)[-1] }}",
    ).expand(spec=feeds())

    @task
    def check_volumes(reports: list[dict[str, Any]]) -> None:
        """An export with zero records is an incident upstream, not a quiet day."""
        if empty := empty_sources(reports):
            raise AirflowFailException(f"zero records read for {', '.join(empty)}")

    @task(retries=0)
    def dbt_build() -> None:
        """Build the example's dbt models on top of the loaded orders, in the database the loads used.

        The profile reads libpq's variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD), set
        here from the same Airflow connection as the loads; they reach dbt through its
        environment only, so the password is on no command line and in no log.
        """
        dbt = shutil.which("dbt")
        if not DBT_PROJECT.is_dir() or dbt is None:
            raise AirflowSkipException(f"no dbt project at {DBT_PROJECT}" if dbt else "the dbt command is not installed")
        command = [dbt, "build", "--project-dir", str(DBT_PROJECT)]
        if (DBT_PROJECT / "profiles.yml").is_file():
            command += ["--profiles-dir", str(DBT_PROJECT)]
        env = {**os.environ, **dbt_env(CONN_ID)}
        done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        print(done.stdout)
        if done.returncode != 0:
            raise AirflowException(f"dbt build exited {done.returncode}: {done.stdout[-2000:]}{done.stderr[-2000:]}")

    @task(trigger_rule="all_done", retries=1, retry_delay=timedelta(minutes=1))
    def notify() -> dict[str, Any]:
        """Send the day's summary whether the day succeeded or failed (pgstage's alert targets, recorded)."""
        context = get_current_context()
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]).get(ti.run_id, {})
        for watcher in (ti.task_id, "day_failed"):     # the day's work only, not its own watchers
            states.pop(watcher, None)
        summary = day_summary(
            dag_id=ti.dag_id, run_id=ti.run_id,
            partition=(context["logical_date"] - timedelta(days=1)).date().isoformat(),
            reports=pull_mapped(ti, "load"),
            failures=pull_mapped(ti, "load", FAILURE_KEY),
            task_states=states,
        )
        sent = notify_day(summary, CONN_ID)
        for outcome in sent:
            print(f"the day's summary to {outcome['target']}: {outcome['status']}"
                  + (f" ({outcome['error']})" if outcome["error"] else ""))
        if not sent:
            print(f"no alert target configured; the day's summary: {summary}")
        return summary

    @task(trigger_rule="one_failed", retries=0)
    def day_failed() -> None:
        raise AirflowFailException("a task of this day failed; see the notification")

    checked = check_volumes(load.output)  # type: ignore[arg-type]  # Airflow passes the mapped reports as a list
    built = dbt_build()
    checked >> built
    [load, checked, built] >> notify()
    [load, checked, built] >> day_failed()
