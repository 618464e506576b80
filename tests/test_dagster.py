"""The Dagster integration against the embedded server: real Dagster, real pgstage runs, no mocks."""



import csv
import io
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

dg = pytest.importorskip("dagster")

from pgstage.demo.generate import SOURCES, generate  # noqa: E402
from pgstage.integrations.dagster import (EXIT_CODE_TAG, PgstageResource, PgstageTranslator,  # noqa: E402
                                          pgstage_assets)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sales"
START = date(2024, 1, 1)
DAYS = ("2024-01-01", "2024-01-02")
SQL = Callable[..., list[tuple[Any, ...]]]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    generate(tmp_path / "data", days=2, orders_per_day=300, seed=7, start=START)
    return tmp_path


def _assets() -> Any:
    return pgstage_assets([EXAMPLE / f"{s}.toml" for s in SOURCES],
                          partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"))


def _materialize(assets: list[Any], day: str, db_url: str, workdir: Path, instance: Any = None) -> Any:
    return dg.materialize(assets, partition_key=day, raise_on_error=False, instance=instance,
                          resources={"pgstage": PgstageResource(database_url=db_url, base_dir=str(workdir))})


def _materialization(result: Any) -> Any:
    [event] = result.asset_materializations_for_node("pgstage")
    return event


def test_one_asset_per_table_keyed_schema_table_with_a_blocking_reject_check() -> None:
    assets = _assets()
    assert assets.keys == {dg.AssetKey(["sales", "orders"])}
    # the sales specs warn on volume anomalies ([anomaly] defaults) and do not reconcile after each run
    assert {c.name: c.blocking for c in assets.check_specs} == {"reject_ratio": True, "volume_anomaly": False}
    assert assets.backfill_policy == dg.BackfillPolicy.multi_run(1)

    class Prefixed(PgstageTranslator):
        def asset_key(self, target: str, specs: Any) -> Any:
            return dg.AssetKey(["raw", *target.split(".")])

    renamed = pgstage_assets([EXAMPLE / "shopify.toml"], translator=Prefixed())
    assert renamed.keys == {dg.AssetKey(["raw", "sales", "orders"])}


def test_two_partitions_metadata_matches_the_ledger(workdir: Path, db_url: str, sql: SQL) -> None:
    assets = _assets()
    for day in DAYS:
        result = _materialize([assets], day, db_url, workdir)
        assert result.success
        meta = {k: v.value for k, v in _materialization(result).metadata.items()}
        runs = sql("SELECT run_id, pipeline, status, counts, rejects_by_rule FROM pgstage.runs"
                   " WHERE partition = %s ORDER BY run_id", (day,))
        assert [r[1] for r in runs] == ["shopify_orders", "woocommerce_orders", "stripe_payments"]
        assert {r[2] for r in runs} == {"succeeded"}
        assert meta["pgstage/run_ids"] == [r[0] for r in runs]
        assert meta["dagster/row_count"] == sql("SELECT count(*) FROM sales.orders")[0][0]
        for key in ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale"):
            assert meta[f"pgstage/{key}"] == sum(r[3][key] for r in runs), key
        assert meta["pgstage/read"] == meta["pgstage/rejected"] + meta["pgstage/valid"]
        by_rule: dict[str, int] = {}
        for r in runs:
            for rule, n in (r[4] or {}).items():
                by_rule[rule] = by_rule.get(rule, 0) + n
        assert meta["pgstage/rejects_by_rule"] == by_rule
        columns = {c.name: c.type for c in meta["dagster/column_schema"].columns}
        assert columns["amount_cents"] == "bigint" and columns["ordered_at"] == "timestamp with time zone"
        assert "_loaded_at" in columns
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["reject_ratio"].passed
        assert checks["volume_anomaly"].passed                  # two days of history: learning
        assert checks["volume_anomaly"].metadata["verdict"].value == "learning"
    assert sql("SELECT count(DISTINCT partition) FROM pgstage.runs") == [(2,)]


def _poison(path: Path, column: str) -> None:
    """Every record's amount negative: all of them break `min = 0`."""
    text = path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, column: "-1.00"})
    path.write_text(out.getvalue(), encoding="utf-8")


def test_over_the_reject_threshold_fails_the_blocking_check_and_nothing_downstream_runs(
        workdir: Path, db_url: str, sql: SQL) -> None:
    _poison(workdir / "data" / "stripe" / "orders_2024-01-02.csv", "Amount")
    built: list[str] = []

    @dg.asset(deps=[dg.AssetKey(["sales", "orders"])],
              partitions_def=dg.DailyPartitionsDefinition(start_date="2024-01-01"),
              backfill_policy=dg.BackfillPolicy.multi_run(1))
    def orders_daily(context) -> None:  # no annotation: Dagster accepts only its own class there
        built.append(context.partition_key)

    assert _materialize([_assets(), orders_daily], "2024-01-01", db_url, workdir).success
    assert built == ["2024-01-01"]
    before = sql("SELECT count(*) FROM sales.orders")[0][0]

    with dg.instance_for_test() as instance:
        result = _materialize([_assets(), orders_daily], "2024-01-02", db_url, workdir, instance)
        assert not result.success
        assert instance.get_run_by_id(result.run_id).tags[EXIT_CODE_TAG] == "3"
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == "reject_ratio"]
    assert not check.passed
    assert check.metadata["over_limit"].value == ["stripe_payments"]
    assert built == ["2024-01-01"]                       # the downstream asset never ran
    runs = sql("SELECT pipeline, status FROM pgstage.runs WHERE partition = '2024-01-02' ORDER BY run_id")
    assert runs == [("shopify_orders", "succeeded"), ("woocommerce_orders", "succeeded"),
                    ("stripe_payments", "rejected_threshold")]
    stripe_day2 = sql("SELECT count(*) FROM sales.orders WHERE source = 'stripe'"
                      " AND _run_id = (SELECT max(run_id) FROM pgstage.runs WHERE pipeline = 'stripe_payments')")
    assert stripe_day2 == [(0,)]                          # nothing of the rejected feed merged
    assert sql("SELECT count(*) FROM sales.orders")[0][0] > before


def test_a_pgstage_error_fails_the_step_with_its_message_and_exit_code(workdir: Path, db_url: str) -> None:
    (workdir / "data" / "shopify" / "orders_2024-01-01.csv").write_text("Wrong,Header\n1,2\n", encoding="utf-8")
    with dg.instance_for_test() as instance:
        result = dg.materialize([_assets()], partition_key="2024-01-01", raise_on_error=False, instance=instance,
                                resources={"pgstage": PgstageResource(database_url=db_url, base_dir=str(workdir))})
        assert not result.success
        [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        error = failure.step_failure_data.error
        assert "Id" in error.message                        # pgstage's own words about the header
        assert failure.step_failure_data.user_failure_data.metadata[EXIT_CODE_TAG].value == 2
        assert instance.get_run_by_id(result.run_id).tags[EXIT_CODE_TAG] == "2"


def test_a_bare_table_keys_public_and_the_asset_runs_without_its_check(tmp_path: Path, db_url: str, sql: SQL) -> None:
    (tmp_path / "notes.csv").write_text("id,body\n1,a\n2,b\n3,c\n", encoding="utf-8")
    spec = tmp_path / "notes.toml"
    spec.write_text('[pipeline]\nname = "notes"\ntarget = "notes"\nkey = ["id"]\nstrategy = "upsert"\n'
                    '[source]\nkind = "csv"\npath = "notes.csv"\n'
                    '[columns]\nid = { from = "id", type = "bigint" }\nbody = { from = "body", type = "text" }\n',
                    encoding="utf-8")
    assets = pgstage_assets([spec])
    assert assets.keys == {dg.AssetKey(["public", "notes"])}
    result = dg.materialize([assets], selection=dg.AssetSelection.all().without_checks(),
                            resources={"pgstage": PgstageResource(database_url=db_url)})
    assert result.success
    assert result.get_asset_check_evaluations() == []
    meta = _materialization(result).metadata
    assert (meta["dagster/row_count"].value, meta["pgstage/inserted"].value) == (3, 3)
    assert sql("SELECT id, body FROM public.notes ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]


def test_a_locked_pipeline_fails_with_exit_code_4_in_the_run_tags(workdir: Path, db_url: str, sql: SQL) -> None:
    import psycopg

    from pgstage.safety import lock_key

    with psycopg.connect(db_url, autocommit=True) as holder, dg.instance_for_test() as instance:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key("shopify_orders", "2024-01-01"),))
        result = _materialize([_assets()], "2024-01-01", db_url, workdir, instance)
        assert not result.success
        assert instance.get_run_by_id(result.run_id).tags[EXIT_CODE_TAG] == "4"
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_failure_data.user_failure_data.metadata[EXIT_CODE_TAG].value == 4
    assert "shopify_orders" in failure.step_failure_data.error.message
    assert "Traceback" not in failure.step_failure_data.error.message
    assert sql("SELECT count(*) FROM pgstage.runs WHERE status = 'succeeded'") == [(0,)]
