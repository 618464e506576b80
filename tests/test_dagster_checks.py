"""The Dagster asset checks over pgstage's volume verdict and after-run reconciliation.

Real Dagster in-process against the embedded server. The volume history is seeded into the
ledger as real runs leave it (tests/test_ops_anomalies.py): five weeks of a feed of about
1,000 records on weekdays, so the sixth Tuesday has a verdict and 100 records on it is far off.
"""

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

dg = pytest.importorskip("dagster")

from pgstage.integrations.dagster import EXIT_CODE_TAG, PgstageResource, pgstage_assets  # noqa: E402
from tests.test_ops_anomalies import START, TUESDAY_MEDIAN, seed_history  # noqa: E402

SQL = Callable[..., list[tuple[Any, ...]]]
TUESDAY = (START + timedelta(days=36)).isoformat()      # the sixth Tuesday: five earlier ones in the history
DAILY = dg.DailyPartitionsDefinition(start_date=START.isoformat())

FEED = """
[pipeline]
name = "{name}"
target = "shop.feed"
key = ["id"]

[source]
path = "{name}_{{date}}.csv"

[columns]
id = {{ from = "Id", type = "bigint" }}

[anomaly]
action = "{action}"
"""

NOTES = """
[pipeline]
name = "notes"
target = "shop.notes"
key = ["id"]
strategy = "upsert"

[source]
path = "notes_{date}.csv"

[columns]
id = { from = "id", type = "bigint" }
body = { from = "body", type = "text" }

[load]
reconcile = "after_run"
"""


def _feed(tmp_path: Path, name: str, action: str, day: str, ids: range) -> Path:
    spec = tmp_path / f"{name}.toml"
    spec.write_text(FEED.format(name=name, action=action), encoding="utf-8")
    (tmp_path / f"{name}_{day}.csv").write_text("Id\n" + "".join(f"{i}\n" for i in ids), encoding="utf-8")
    return spec


def _downstream(built: list[str], upstream: list[str]) -> Any:
    @dg.asset(deps=[dg.AssetKey(upstream)], partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.multi_run(1))
    def mart(context) -> None:  # no annotation: Dagster accepts only its own class there
        built.append(context.partition_key)

    return mart


def _materialize(assets: list[Any], day: str, db_url: str, instance: Any = None, base_dir: Path | None = None) -> Any:
    return dg.materialize(assets, partition_key=day, raise_on_error=False, instance=instance,
                          resources={"pgstage": PgstageResource(database_url=db_url,
                                                                base_dir=str(base_dir) if base_dir else None)})


def _check(result: Any, name: str) -> Any:
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == name]
    return check


def _materialization(result: Any) -> Any:
    [event] = result.asset_materializations_for_node("pgstage")
    return event


def _meta(check: Any) -> dict[str, Any]:
    return {k: v.value for k, v in check.metadata.items()}


def test_checks_are_declared_from_the_specs(tmp_path: Path) -> None:
    def declared(*specs: Path) -> dict[str, bool]:
        return {c.name: c.blocking for c in pgstage_assets(list(specs), partitions_def=DAILY).check_specs}

    assert declared(_feed(tmp_path, "a", "warn", TUESDAY, range(1))) == {"reject_ratio": True,
                                                                         "volume_anomaly": False}
    assert declared(_feed(tmp_path, "b", "block", TUESDAY, range(1))) == {"reject_ratio": True,
                                                                          "volume_anomaly": True}
    assert declared(_feed(tmp_path, "c", "off", TUESDAY, range(1))) == {"reject_ratio": True}
    # one feed of the table blocks: the table's check is blocking (its severity says which feed failed)
    assert declared(tmp_path / "a.toml", tmp_path / "b.toml")["volume_anomaly"] is True
    (tmp_path / "notes.toml").write_text(NOTES, encoding="utf-8")
    assert declared(tmp_path / "notes.toml") == {"reject_ratio": True, "volume_anomaly": False,
                                                 "reconciliation": True}


def test_a_flagged_feed_with_action_block_fails_its_check_and_nothing_downstream_runs(
        tmp_path: Path, db_url: str, sql: SQL) -> None:
    seed_history(db_url, 35)                                    # pipeline `feed`: five weeks of ~1,000 a day
    feed = _feed(tmp_path, "feed", "block", TUESDAY, range(100))
    other = _feed(tmp_path, "other", "warn", TUESDAY, range(1000, 1003))   # no history: learning, merged
    built: list[str] = []
    with dg.instance_for_test() as instance:
        result = _materialize([pgstage_assets([feed, other], partitions_def=DAILY),
                               _downstream(built, ["shop", "feed"])], TUESDAY, db_url, instance)
        assert not result.success
        assert instance.get_run_by_id(result.run_id).tags[EXIT_CODE_TAG] == "5"
    check = _check(result, "volume_anomaly")
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
    meta = _meta(check)
    band = [TUESDAY_MEDIAN / 2, TUESDAY_MEDIAN * 1.5]
    assert (meta["verdict"], meta["flagged"], meta["no_verdict"]) == ("flagged", ["feed"], [])
    assert {k: meta["verdicts"]["feed"][k] for k in ("verdict", "action", "observed", "expected_range")} == {
        "verdict": "flagged", "action": "block", "observed": 100, "expected_range": band}
    assert meta["verdicts"]["feed"]["score"] < -3.5
    assert meta["verdicts"]["other"]["verdict"] == "learning"
    assert "observed" not in meta                               # two feeds: their numbers are per feed only
    assert check.description == (f"volume anomaly: feed: 100 records read, expected {band[0]:,.0f}-{band[1]:,.0f}"
                                 " on a Tuesday (blocked, nothing merged: feed)")
    assert built == []                                          # the downstream asset never ran
    assert sql("SELECT pipeline, status FROM pgstage.runs WHERE partition = %s ORDER BY run_id", (TUESDAY,)) == [
        ("feed", "blocked"), ("other", "succeeded")]
    assert sql("SELECT id FROM shop.feed ORDER BY id") == [(1000,), (1001,), (1002,)]   # only the other feed's
    assert _check(result, "reject_ratio").passed


def test_a_flagged_feed_with_action_warn_is_a_warning_and_downstream_runs(
        tmp_path: Path, db_url: str, sql: SQL) -> None:
    seed_history(db_url, 35)
    feed = _feed(tmp_path, "feed", "warn", TUESDAY, range(100))
    built: list[str] = []
    result = _materialize([pgstage_assets([feed], partitions_def=DAILY), _downstream(built, ["shop", "feed"])],
                          TUESDAY, db_url)
    assert result.success
    check = _check(result, "volume_anomaly")
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.WARN)
    meta = _meta(check)
    assert (meta["verdict"], meta["observed"], meta["expected_range"]) == (
        "flagged", 100, [TUESDAY_MEDIAN / 2, TUESDAY_MEDIAN * 1.5])
    assert meta["score"] == meta["verdicts"]["feed"]["score"] < -3.5
    assert built == [TUESDAY]
    assert sql("SELECT count(*), min(id), max(id) FROM shop.feed") == [(100, 0, 99)]   # merged, as warn says
    assert sql("SELECT status, anomaly->>'verdict' FROM pgstage.runs WHERE partition = %s", (TUESDAY,)) == [
        ("succeeded", "flagged")]


def test_learning_passes_and_a_skipped_unit_has_no_verdict(tmp_path: Path, db_url: str, sql: SQL) -> None:
    seed_history(db_url, 3)                                     # three earlier runs: a verdict needs seven
    feed = _feed(tmp_path, "feed", "block", TUESDAY, range(100))
    assets = pgstage_assets([feed], partitions_def=DAILY)
    result = _materialize([assets], TUESDAY, db_url)
    assert result.success
    check = _check(result, "volume_anomaly")
    assert check.passed
    meta = _meta(check)
    assert (meta["verdict"], meta["observed"], meta["flagged"]) == ("learning", 100, [])
    assert "expected_range" not in meta and "score" not in meta
    assert check.description == "learning: feed: 3 earlier successful run(s); a verdict needs 7"
    assert sql("SELECT count(*) FROM shop.feed") == [(100,)]

    again = _materialize([assets], TUESDAY, db_url)             # the file is loaded: the unit is skipped
    assert again.success
    check = _check(again, "volume_anomaly")
    assert check.passed
    assert (_meta(check)["verdict"], _meta(check)["no_verdict"], _meta(check)["verdicts"]) == (
        "no verdict", ["feed"], {})
    assert check.description == "no verdict: nothing new was loaded (feed skipped)"
    assert sql("SELECT status FROM pgstage.runs WHERE pipeline = 'feed' AND partition = %s ORDER BY run_id",
               (TUESDAY,)) == [("succeeded",), ("skipped",)]


DAY1, DAY2 = "2024-01-01", "2024-01-02"

# Planted after day 1: the row of id 5 vanishes once inserted, and the row of id 6 is changed.
TAMPER = """
CREATE FUNCTION shop.tamper() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id = 5 THEN DELETE FROM shop.notes WHERE id = 5; END IF;
  IF NEW.id = 6 THEN UPDATE shop.notes SET body = 'tampered' WHERE id = 6; END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER tamper AFTER INSERT ON shop.notes FOR EACH ROW EXECUTE FUNCTION shop.tamper();
"""


def test_reconciliation_after_run_fails_with_the_exact_counts(tmp_path: Path, db_url: str, sql: SQL) -> None:
    specs, data = tmp_path / "specs", tmp_path / "data"       # the resource's base_dir: the data is elsewhere
    specs.mkdir()
    data.mkdir()
    (specs / "notes.toml").write_text(NOTES, encoding="utf-8")
    (data / f"notes_{DAY1}.csv").write_text("id,body\n1,a\n2,b\n3,c\n", encoding="utf-8")
    (data / f"notes_{DAY2}.csv").write_text("id,body\n4,d\n5,e\n6,f\n", encoding="utf-8")
    assets = pgstage_assets([specs / "notes.toml"], partitions_def=DAILY)
    built: list[str] = []

    first = _materialize([assets, _downstream(built, ["shop", "notes"])], DAY1, db_url, base_dir=data)
    assert first.success
    check = _check(first, "reconciliation")
    assert check.passed and check.description == "the target holds what the source says"
    meta = _meta(check)
    assert {k: meta[k] for k in ("configured", "missing", "different", "extra", "samples", "errors")} == {
        "configured": True, "missing": 0, "different": 0, "extra": 0, "samples": {}, "errors": {}}
    assert meta["summaries"] == {"notes": "0 missing, 0 different"}
    assert built == [DAY1]

    sql(TAMPER)
    second = _materialize([assets, _downstream(built, ["shop", "notes"])], DAY2, db_url, base_dir=data)
    assert not second.success
    check = _check(second, "reconciliation")
    assert (check.passed, check.severity) == (False, dg.AssetCheckSeverity.ERROR)
    meta = _meta(check)
    assert (meta["missing"], meta["different"], meta["extra"]) == (1, 1, 0)
    assert meta["samples"] == {"notes": {"missing": [{"key": {"id": 5}}],
                                         "different": [{"key": {"id": 6}, "columns": ["body"]}]}}
    assert check.description == "the target differs from the source in notes: 1 missing, 1 different"
    assert built == [DAY1]                                      # blocking: nothing downstream built on it
    [run] = _materialization(second).metadata["pgstage/runs"].value
    assert run["status"] == "succeeded" and run["rows"]["inserted"] == 3    # the load itself succeeded
    rows = run["rows"]
    assert rows["read"] == rows["rejected"] + rows["valid"]
    assert rows["valid"] == rows["duplicate"] + rows["inserted"] + rows["updated"] + rows["unchanged"] + rows["stale"]
    assert sql("SELECT id, body FROM shop.notes ORDER BY id") == [
        (1, "a"), (2, "b"), (3, "c"), (4, "d"), (6, "tampered")]
    stored = sql("SELECT reconcile->>'summary' FROM pgstage.runs WHERE partition = %s", (DAY2,))
    assert stored == [("1 missing, 1 different",)]


def test_without_after_run_there_is_no_reconciliation_check(tmp_path: Path, db_url: str) -> None:
    feed = _feed(tmp_path, "feed", "warn", DAY1, range(5))
    assets = pgstage_assets([feed], partitions_def=DAILY)
    assert {c.name for c in assets.check_specs} == {"reject_ratio", "volume_anomaly"}
    result = _materialize([assets], DAY1, db_url)
    assert result.success
    assert sorted(c.check_name for c in result.get_asset_check_evaluations()) == ["reject_ratio", "volume_anomaly"]
