"""The sales example as one Dagster graph: three pgstage feeds into sales.orders, dbt downstream.

    dagster dev -f examples/sales/definitions.py
    dagster asset materialize -f examples/sales/definitions.py --select '*' --partition 2024-01-03

Environment: PGSTAGE_DATABASE_URL (default: the embedded server of the current directory),
PGSTAGE_DEMO_DIR (where `pgstage demo --generate-only` wrote data/, default ./pgstage-demo).
"""

import os
from datetime import timedelta
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject, dbt_assets

from pgstage.integrations.dagster import PgstageResource, pgstage_assets
from pgstage.integrations.dbt import dbt_env

HERE = Path(__file__).resolve().parent
DEMO_START = "2024-01-01"          # pgstage.demo.START: the first day of the demo's files

daily = dg.DailyPartitionsDefinition(start_date=DEMO_START, timezone="UTC")

# One asset, sales/orders, fed by the three exports; a dbt source `sales.orders` is downstream of it.
sales_feeds = pgstage_assets([HERE / "shopify.toml", HERE / "woocommerce.toml", HERE / "stripe.toml"],
                             partitions_def=daily)

dbt_project = DbtProject(project_dir=HERE / "dbt", profiles_dir=HERE / "dbt")
if not dbt_project.manifest_path.exists():   # `dagster asset materialize` needs it; `dagster dev` parses anyway
    dbt_project.preparer.prepare(dbt_project)
dbt_project.prepare_if_dev()


@dbt_assets(manifest=dbt_project.manifest_path, project=dbt_project, partitions_def=daily,
            backfill_policy=dg.BackfillPolicy.multi_run(1))
def sales_marts(context: dg.AssetExecutionContext, dbt: DbtCliResource, pgstage: PgstageResource):  # type: ignore[no-untyped-def]
    """stg_orders, orders_daily (incremental, 3-day lookback), customers and their snapshot, with tests.

    Each day's run builds incrementally; the lookback makes a late update of the last three
    days correct its day, whichever partition triggered the build."""
    os.environ.update(dbt_env(pgstage.database_url))    # profiles.yml reads PGHOST, PGPORT, …
    yield from dbt.cli(["build"], context=context).stream()


daily_job = dg.define_asset_job("sales_daily", selection=dg.AssetSelection.all())

# Yesterday's partition, every day at 02:00 UTC (the schedule targets the last complete day).
daily_schedule = dg.build_schedule_from_partitioned_job(daily_job, hour_of_day=2, minute_of_hour=0)

# By 08:00 UTC every asset must have been materialized since 02:00: the deadline the business
# reads at. Dagster marks an asset that misses it as failing its freshness.
by_eight = dg.FreshnessPolicy.cron(deadline_cron="0 8 * * *", lower_bound_delta=timedelta(hours=6), timezone="UTC")

defs = dg.Definitions(
    assets=[sales_feeds, sales_marts],
    jobs=[daily_job],
    schedules=[daily_schedule],
    resources={
        "pgstage": PgstageResource(database_url=os.environ.get("PGSTAGE_DATABASE_URL"),
                                   base_dir=os.environ.get("PGSTAGE_DEMO_DIR", "pgstage-demo")),
        "dbt": DbtCliResource(project_dir=dbt_project),
    },
).map_asset_specs(func=lambda spec: dg.apply_freshness_policy(spec, by_eight))
