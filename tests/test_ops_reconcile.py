"""Reconciliation: a row deleted by hand is missing, a value changed by hand is different, an untouched
load is clean for every strategy; a 1,000,000-row PostgreSQL source with 3 rows changed by hand is
found by range checksums while fetching fewer than 1% of the rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pgstage
from pgstage.cli import app
from pgstage.ops.reconcile import reconcile
from tests.conftest import Loader
from tests.test_cdc import seed, source, write_spec  # noqa: F401 (source is a fixture)
from tests.test_ops_alerts import Receiver, receiver  # noqa: F401 (receiver is a fixture)

runner = CliRunner()

SPEC = """
[pipeline]
name = "orders"
target = "shop.orders"
key = ["source", "id"]
strategy = "{strategy}"
{version}

[source]
path = "orders_{{date}}.csv"

[columns]
source     = {{ const = "web" }}
id         = {{ from = "Id", type = "bigint" }}
email      = {{ from = "Email", type = "text", normalize = ["trim", "lower"] }}
total      = {{ from = "Total", type = "numeric(10,2)", min = 0 }}
updated_at = {{ from = "Updated", type = "timestamptz" }}

[load]
batch_rows = 3
{load}
"""

CSV = ("Id,Email,Total,Updated\n"
       "1, A@x.org ,1.00,2024-03-05 10:00:00+00\n"
       "2,b@x.org,2.00,2024-03-05 10:00:00+00\n"
       "3,c@x.org,-3,2024-03-05 10:00:00+00\n"          # rejected: min 0 — never in the target, never missing
       "4,d@x.org,4.00,2024-03-05 10:00:00+00\n"
       "2,b@x.org,2.50,2024-03-05 11:00:00+00\n"        # a later version of 2 in another batch
       "5,e@x.org,5.00,2024-03-05 10:00:00+00\n")
DAY = "2024-03-05"


EXTRA_LINES = {   # what each strategy needs beyond the shared spec
    "upsert_if_newer": 'version = "updated_at"',
    "replace_partition": 'partition = { column = "updated_at", grain = "day" }',
}


def setup(loader: Loader, strategy: str = "upsert", load: str = "max_reject_ratio = 0.5") -> Path:
    loader.write(f"orders_{DAY}.csv", CSV)
    text = SPEC.format(strategy=strategy, version=EXTRA_LINES.get(strategy, ""), load=load)
    if strategy == "append":
        text = text.replace('key = ["source", "id"]\n', "")
    return loader.spec(text)


# source rows / target rows of an untouched load: 4 keys (id 2 twice, id 3 rejected); append keeps every
# valid record (5), so its target holds 5 rows; scd2 holds 5 versions of which 4 are current (compared).
# `extra` is counted only where the strategy owns a slice of the target (the partition, the file).
UNTOUCHED = {"insert_only": (4, 4, None), "upsert": (4, 4, None), "upsert_if_newer": (4, 4, None),
             "replace_partition": (4, 4, 0), "append": (5, 5, 0), "scd2": (4, 4, None)}


@pytest.mark.parametrize("strategy", list(UNTOUCHED))
def test_an_untouched_load_is_clean(loader: Loader, sql: Any, strategy: str) -> None:
    spec = setup(loader, strategy)
    report = loader.run(partition=DAY)
    assert report.status == "succeeded", report.message
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert not result.differences, result.as_dict()
    source_rows, target_rows, extra = UNTOUCHED[strategy]
    assert (result.source_rows, result.target_rows, result.method) == (source_rows, target_rows, "keys")
    assert (result.missing.count, result.different.count) == (0, 0)
    assert (result.extra.count if result.extra is not None else None) == extra
    # nothing was written by the comparison: no run, no rejects, no staging table left
    assert sql("SELECT count(*), count(*) FILTER (WHERE reconcile IS NOT NULL) FROM pgstage.runs") == [(1, 1)]
    assert sql("SELECT count(*) FROM pgstage.rejects") == [(1,)]
    assert sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%'") == [(0,)]


def test_deleted_and_changed_rows_by_hand(loader: Loader, sql: Any) -> None:
    spec = setup(loader)
    loader.run(partition=DAY)
    sql("DELETE FROM shop.orders WHERE id = 4")
    sql("UPDATE shop.orders SET total = 9.99 WHERE id = 2")
    sql("UPDATE shop.orders SET email = 'z@x.org', total = 0 WHERE id = 5")
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert result.differences and result.summary == "1 missing, 2 different"
    assert result.missing.sample == ({"key": {"source": "web", "id": 4}},)
    assert result.different.sample == ({"key": {"source": "web", "id": 2}, "columns": ["total"]},
                                       {"key": {"source": "web", "id": 5}, "columns": ["email", "total"]})
    assert result.different.columns == {"email": 1, "total": 2}
    # the CLI: exit 6, one JSON document on stdout
    done = runner.invoke(app, ["reconcile", str(spec), "--partition", DAY, "--db", loader.db_url, "--json"])
    assert done.exit_code == 6
    doc = json.loads(done.stdout)
    assert doc["missing"] == {"count": 1, "sample": [{"key": {"source": "web", "id": 4}}]}
    assert doc["different"]["columns"] == {"email": 1, "total": 2}
    text = runner.invoke(app, ["reconcile", str(spec), "--partition", DAY, "--db", loader.db_url])
    assert text.exit_code == 6
    assert "missing: 1" in text.output and "differs in email, total" in text.output
    assert "the target differs from the source: 1 missing, 2 different" in text.output
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert "reconcile (keys): 1 missing, 2 different" in runner.invoke(app, ["show", str(run_id), "--db",
                                                                              loader.db_url]).output


def test_a_row_added_by_hand_to_the_partition_is_extra(loader: Loader, sql: Any) -> None:
    spec = setup(loader, "replace_partition")
    loader.run(partition=DAY)
    sql("INSERT INTO shop.orders (source, id, email, total, updated_at) VALUES"
        " ('web', 99, 'h@x.org', 9, '2024-03-05 12:00:00+00'),"    # inside the partition: extra
        " ('web', 98, 'o@x.org', 8, '2024-03-07 12:00:00+00')")    # another day: not this partition's business
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert result.differences and result.summary == "0 missing, 0 different, 1 extra"
    assert result.extra is not None and result.extra.sample == ({"key": {"source": "web", "id": 99}},)
    assert (result.source_rows, result.target_rows) == (4, 6)


def test_a_hand_deleted_appended_row_is_missing(loader: Loader, sql: Any) -> None:
    spec = setup(loader, "append")
    loader.run(partition=DAY)
    assert sql("SELECT _record, id FROM shop.orders ORDER BY _record") == [(1, 1), (2, 2), (4, 4), (5, 2), (6, 5)]
    ((name,),) = sql("SELECT DISTINCT _source_file FROM shop.orders")
    sql("DELETE FROM shop.orders WHERE _record = 5")                              # the later record of id 2
    sql("UPDATE shop.orders SET total = 0 WHERE _record = 6")
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert result.summary == "1 missing, 1 different, 0 extra"
    assert result.missing.sample == ({"key": {"_source_file": name, "_record": 5}},)
    assert result.different.sample == ({"key": {"_source_file": name, "_record": 6}, "columns": ["total"]},)


def test_scd2_compares_the_current_versions(loader: Loader, sql: Any) -> None:
    spec = setup(loader, "scd2")
    loader.run(partition=DAY, as_of="2024-03-05 00:00:00+00")
    loader.write(f"orders_{DAY}.csv", CSV.replace("5,e@x.org,5.00", "5,e@x.org,5.50"))   # a new version of 5
    assert loader.run(partition=DAY, force=True, as_of="2024-03-06 00:00:00+00").counts.updated == 1
    assert sql("SELECT count(*), count(*) FILTER (WHERE _is_current) FROM shop.orders") == [(5, 4)]
    # a closed version that no longer matches the source is history, not a difference
    sql("UPDATE shop.orders SET email = 'old@x.org' WHERE id = 5 AND NOT _is_current")
    assert not reconcile(spec, partition=DAY, db=loader.db_url).differences
    sql("UPDATE shop.orders SET total = 0 WHERE id = 5 AND _is_current")
    sql("UPDATE shop.orders SET _is_current = false, _valid_to = now() WHERE id = 4")   # closed by hand
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert result.summary == "1 missing, 1 different"
    assert result.missing.sample == ({"key": {"source": "web", "id": 4}},)
    assert result.different.sample == ({"key": {"source": "web", "id": 5}, "columns": ["total"]},)
    assert result.target_rows == 3


def test_a_newer_target_row_is_no_difference(loader: Loader, sql: Any) -> None:
    spec = setup(loader, "upsert_if_newer")
    loader.run(partition=DAY)
    sql("UPDATE shop.orders SET total = 7, updated_at = '2024-03-06 00:00:00+00' WHERE id = 1")
    result = reconcile(spec, partition=DAY, db=loader.db_url)
    assert not result.differences and result.newer_in_target == 1


def test_clean_exit_zero_and_errors(loader: Loader, sql: Any) -> None:
    spec = setup(loader)
    done = runner.invoke(app, ["reconcile", str(spec), "--partition", DAY, "--db", loader.db_url])
    assert done.exit_code == 2 and "the target shop.orders does not exist yet: nothing to reconcile" in done.output
    loader.run(partition=DAY)
    done = runner.invoke(app, ["reconcile", str(spec), "--partition", DAY, "--db", loader.db_url])
    assert done.exit_code == 0 and "clean: the target holds what the source says" in done.output
    done = runner.invoke(app, ["reconcile", str(spec), "--partition", "yesterday", "--db", loader.db_url])
    assert done.exit_code == 2 and "--partition 'yesterday' is not a date" in done.output


def test_after_run_stores_the_result_and_alerts_on_a_mismatch(loader: Loader, sql: Any, receiver: Receiver) -> None:
    # insert_only never overwrites: a corrected file leaves the target different, which after_run reports
    spec = setup(loader, "insert_only", f'max_reject_ratio = 0.5\nreconcile = "after_run"\n\n[alerts]\nwebhook = "{receiver.url}/h"')
    report = loader.run(partition=DAY)
    assert report.reconcile is not None and report.reconcile["differences"] is False
    loader.write(f"orders_{DAY}.csv", CSV.replace("4,d@x.org,4.00", "4,d@x.org,44.00"))
    report = loader.run(partition=DAY)
    assert report.status == "succeeded" and report.counts.unchanged == 3
    assert report.reconcile is not None and report.reconcile["summary"] == "0 missing, 1 different"
    stored = sql("SELECT reconcile->'different'->'sample' FROM pgstage.runs WHERE run_id = %s", (report.run_id,))
    assert stored == [([{"key": {"source": "web", "id": 4}, "columns": ["total"]}],)]
    assert [body["event"] for _, body in receiver.requests] == ["reconcile"]
    assert receiver.requests[0][1]["message"] == "the target differs from the source: 0 missing, 1 different"
    del spec


# --- a PostgreSQL source: range checksums ---------------------------------------------------------------


def test_million_row_source_three_changes_found_fetching_under_one_percent(loader: Loader, source: Any,
                                                                           sql: Any) -> None:
    url, src = source
    seed(src, 1_000_000)
    spec = write_spec(loader, url, on_delete=None)
    report = loader.run()
    assert report.counts.inserted == 1_000_000
    sql("UPDATE app.orders SET amount = amount + 1 WHERE id = 123456")             # changed by hand in the target
    sql("DELETE FROM app.orders WHERE id = 654321")                                # deleted by hand
    src("UPDATE shop.orders SET customer = 'someone else' WHERE id = 999")          # changed in the source, time kept
    result = reconcile(spec, db=loader.db_url)
    assert (result.method, result.source_rows, result.target_rows) == ("checksums", 1_000_000, 999_999)
    assert result.missing.sample == ({"key": {"id": 654321}},)
    assert sorted(result.different.sample, key=lambda d: d["key"]["id"]) == [
        {"key": {"id": 999}, "columns": ["customer"]}, {"key": {"id": 123456}, "columns": ["amount"]}]
    assert result.extra is not None and result.extra.count == 0 and result.in_flight == 0
    assert 0 < result.fetched < 10_000, result.fetched        # < 1% of the rows left either database
    assert result.summary == "1 missing, 2 different, 0 extra"


def test_rows_changed_after_the_watermark_are_in_flight(loader: Loader, source: Any, sql: Any) -> None:
    url, src = source
    seed(src, 2000)
    spec = write_spec(loader, url, on_delete="mark")
    loader.run()
    assert not reconcile(spec, db=loader.db_url).differences
    src("UPDATE shop.orders SET amount = 0, updated_at = '2024-02-01 00:00:00+00' WHERE id IN (5, 6)")
    src("INSERT INTO shop.orders VALUES (5000, 'new', 1, '2024-02-01', '2024-02-01', NULL)")
    src("UPDATE shop.orders SET deleted_at = '2024-01-01 00:10:00+00' WHERE id = 7")   # a soft delete, before it
    sql("UPDATE app.orders SET _deleted_at = '2024-01-01 00:10:00+00' WHERE id = 7")     # ... and its mark
    result = reconcile(spec, db=loader.db_url)
    assert result.in_flight == 3 and not result.differences, result.as_dict()
    assert result.source_rows == 2001 - 3 - 1 and result.target_rows == 2000   # in flight and soft-deleted left out
    done = runner.invoke(app, ["reconcile", str(spec), "--db", loader.db_url])
    assert done.exit_code == 0 and "in flight 3" in done.output


def test_library_after_run_for_a_postgres_source(loader: Loader, source: Any) -> None:
    url, src = source
    seed(src, 500)
    spec = write_spec(loader, url, on_delete=None)
    spec.write_text(spec.read_text().replace("[load]\n", '[load]\nreconcile = "after_run"\n'))
    report = pgstage.run(spec, db=loader.db_url)
    assert report.reconcile is not None and report.reconcile["method"] == "checksums"
    assert report.reconcile["differences"] is False and report.reconcile["fetched"] == 0


HOSTILE = """
[pipeline]
name = "odd"
target = "we\\"ird.t;x"
key = ["ba'z"]

[source]
path = "odd.csv"

[columns]
"ba'z"   = { from = "Id;", type = "bigint" }
"q\\"uote" = { from = "Val'", type = "text" }
"""


def test_hostile_names_reconcile(loader: Loader, sql: Any) -> None:
    """Names with quotes and semicolons go through sql.Identifier everywhere, rendered and executed."""
    loader.write("odd.csv", '"Id;",Val\'\n1,a\n2,b\n')
    spec = loader.spec(HOSTILE)
    loader.run()
    sql('UPDATE "we""ird"."t;x" SET "q""uote" = \'z\' WHERE "ba\'z" = 2')
    result = reconcile(spec, db=loader.db_url)
    assert result.different.sample == ({"key": {"ba'z": 2}, "columns": ['q"uote']},)


def test_builders_render() -> None:
    """The checksum builders as PostgreSQL receives them (pure: no connection)."""
    from pgstage.ops._checksums import build_fetch, build_ranges

    side = sql_text("SELECT 1")
    assert build_ranges(side, 12, 8).as_string(None) == (
        "SELECT kh & 4095 AS r, count(*), bit_xor(rh) FROM (SELECT 1) x WHERE 8 = 0 OR kh & 255 ="
        " ANY(%(parents)s::bigint[]) GROUP BY 1")
    assert build_fetch(side, 4).as_string(None) == (
        "SELECT key, row, rh FROM (SELECT 1) x WHERE kh & 15 = ANY(%(ranges)s::bigint[])")


def sql_text(text: str) -> Any:
    from psycopg import sql

    return sql.SQL(text)


def test_fetching_stays_bounded_when_the_target_is_far_off(loader: Loader, source: Any, sql: Any) -> None:
    """A truncated target: every range differs; 256 ranges are fetched, the rest only counted, and the note says so."""
    from pgstage.ops import _checksums

    url, src = source
    seed(src, 70_000)
    spec = write_spec(loader, url, on_delete=None)
    loader.run()
    sql("TRUNCATE app.orders")
    result = reconcile(spec, db=loader.db_url)
    assert result.ranges == 512                                  # 70,000 rows / 256 per range -> 9 bits
    (note,) = [n for n in result.notes if "not fetched" in n]
    unfetched = int(note.split("up to ")[1].split(" rows")[0].replace(",", ""))
    assert note.startswith("256 more differing key ranges")
    assert result.missing.count + unfetched == 70_000 and result.fetched == result.missing.count
    assert result.different.count == 0 and result.differences
