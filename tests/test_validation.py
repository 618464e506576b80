"""Validation users trust: references, uniqueness, custom checks, thresholds, dry run, drift, resolved rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import pgstage
from pgstage.cli import app
from pgstage.errors import HeaderMismatch, RejectLimitExceeded, SpecError
from tests.conftest import Loader, assert_identity

SPEC = """
[pipeline]
name = "orders"
target = "shop.orders"
key = ["id"]
strategy = "upsert"

[source]
path = "orders.csv"
{source}

[columns]
id = {{ from = "id", type = "bigint" }}
customer = {{ from = "customer", type = "bigint", references = "shop.customers(id)" }}
region = {{ from = "region", type = "text" }}
country = {{ from = "country", type = "text" }}
email = {{ from = "email", type = "text", normalize = ["trim", "lower"], unique = {unique} }}
total = {{ from = "total", type = "money_cents", required = true }}
refunded = {{ from = "refunded", type = "money_cents" }}

[references]
place = {{ cols = ["region", "country"], to = "shop.places(region, country)" }}

[checks]
refund_not_above_total = "refunded <= total"

[load]
max_reject_ratio = {ratio}
{load}
"""

HEADER = "id,customer,region,country,email,total,refunded\n"


def setup_refs(sql: Any) -> None:
    sql("CREATE SCHEMA shop; CREATE TABLE shop.customers (id bigint PRIMARY KEY);"
        " INSERT INTO shop.customers VALUES (1), (2);"
        " CREATE TABLE shop.places (region text, country text);"
        " INSERT INTO shop.places VALUES ('north', 'DE'), ('south', 'FR')")


def write(loader: Loader, rows: str, *, unique: str = "true", ratio: float = 1.0, source: str = "",
          load: str = "") -> None:
    loader.spec(SPEC.format(unique=unique, ratio=ratio, source=source, load=load))
    loader.write("orders.csv", HEADER + rows)


def reasons(sql: Any, run_id: int | None = None) -> list[tuple[int, list[str]]]:
    rows = sql("SELECT record, reasons FROM pgstage.rejects" + (f" WHERE run_id = {run_id}" if run_id else "")
               + " ORDER BY run_id, record")
    return [(r, [f"{x['column'] or '-'}.{x['rule']}: {x['message']}" for x in rs]) for r, rs in rows]


def test_references_unique_and_checks_each_reject_exactly(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n"      # fine
                  "2,3,north,DE,b@x.com,10.00,0\n"      # customer 3 does not exist
                  "3,,south,FR,c@x.com,10.00,0\n"       # NULL reference: fine (not required)
                  "4,2,north,FR,d@x.com,10.00,0\n"      # (north, FR) is no place
                  "5,2,,FR,e@x.com,10.00,0\n"           # composite with a NULL: fine
                  "6,1,south,FR,A@X.com ,10.00,0\n"     # email repeats record 1 (after normalize)
                  "7,1,south,FR,g@x.com,10.00,12.00\n"  # refund above total
                  "8,1,south,FR,h@x.com,10.00,\n")      # NULL refund: the check is not false
    report = loader.run()
    c = report.counts
    assert (c.read, c.rejected, c.inserted) == (8, 5, 3)
    assert reasons(sql) == [
        (1, ["email.unique: 'a@x.com' is not unique: another key has it in this load or in the target"]),
        (2, ["customer.references: '3' is not in shop.customers(id)"]),
        (4, ["-.place: 'north', 'FR' is not in shop.places(region, country)"]),
        (6, ["email.unique: 'a@x.com' is not unique: another key has it in this load or in the target"]),
        (7, ["-.refund_not_above_total: check failed: refunded <= total"]),
    ]
    assert report.rejects_by_rule == {"email.unique": 2, "customer.references": 1, "place": 1,
                                      "refund_not_above_total": 1}
    assert sql("SELECT id FROM shop.orders ORDER BY id") == [(3,), (5,), (8,)]


def test_unique_against_the_target_under_another_key(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n")
    loader.run()
    loader.write("orders.csv", HEADER + "2,1,north,DE,a@x.com,10.00,0\n1,1,north,DE,a@x.com,11.00,0\n"
                                        "3,1,north,DE,c@x.com,10.00,0\n")
    report = loader.run()
    # Both records carrying a@x.com under two keys repeat it within the load: both are rejected.
    assert (report.counts.inserted, report.counts.rejected) == (1, 2)
    loader.write("orders.csv", HEADER + "1,1,north,DE,a@x.com,12.00,0\n")
    same_key = loader.run()
    assert (same_key.counts.updated, same_key.counts.rejected) == (1, 0)  # its own key: not a repeat
    loader.write("orders.csv", HEADER + "4,1,north,DE,a@x.com,10.00,0\n")
    other_key = loader.run()
    assert other_key.counts.rejected == 1  # the target has it under key 1


def test_missing_referenced_table_is_a_spec_error(loader: Loader, sql) -> None:
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n")
    with pytest.raises(SpecError) as error:
        loader.run()
    assert error.value.exit_code == 2
    assert "columns.customer.references: table shop.customers does not exist" in str(error.value)
    assert "references.place: table shop.places does not exist" in str(error.value)


def test_check_with_a_syntax_error_fails_at_spec_time(tmp_path: Path) -> None:
    spec = SPEC.format(unique="false", ratio=1.0, source="", load="").replace(
        '"refunded <= total"', '"refunded <= total)"')
    (tmp_path / "spec.toml").write_text(spec)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "spec.toml"), "--db", "postgresql://nobody@127.0.0.1:1/x"])
    assert result.exit_code == 2
    assert "checks.refund_not_above_total" in result.output and "position" in result.output


def test_max_rejects_stops_the_run_with_samples(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,9,north,DE,a@x.com,10.00,0\n2,9,north,DE,b@x.com,10.00,0\n3,1,north,DE,c@x.com,1,0\n",
          load="max_rejects = 1")
    with pytest.raises(RejectLimitExceeded) as error:
        loader.run()
    assert error.value.exit_code == 3
    assert "2 of 3 records rejected (66.7%), above max_rejects 1: nothing was merged" in str(error.value)
    assert "top rules: customer.references (2)" in str(error.value)
    assert "e.g. record 1: customer.references; record 2: customer.references" in str(error.value)
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]


def snapshot(sql: Any) -> list[Any]:
    """Every table and column outside the ledger, with every row: what a dry run must not change."""
    catalog = sql("SELECT table_schema, table_name, column_name, data_type FROM information_schema.columns"
                  " WHERE table_schema NOT IN ('pgstage', 'pg_catalog', 'information_schema') ORDER BY 1, 2, 3")
    tables = sorted({(s, t) for s, t, _, _ in catalog})
    data = [sql(f'SELECT * FROM "{s}"."{t}" ORDER BY 1') for s, t in tables]
    indexes = sql("SELECT schemaname, indexname FROM pg_indexes WHERE schemaname NOT IN ('pgstage', 'pg_catalog')"
                  " ORDER BY 1, 2")
    return [catalog, data, indexes]


def test_dry_run_writes_nothing_and_predicts_the_real_run(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n2,1,north,DE,b@x.com,10.00,0\n")
    loader.run()
    loader.write("orders.csv", HEADER + "1,1,north,DE,a@x.com,10.00,0\n2,1,north,DE,b@x.com,20.00,0\n"
                                        "3,1,north,DE,c@x.com,30.00,0\n3,1,north,DE,c@x.com,31.00,0\n"
                                        "4,9,north,DE,d@x.com,40.00,0\n")
    before = snapshot(sql)
    dry = loader.run(dry_run=True)
    assert snapshot(sql) == before
    assert dry.dry_run and dry.merge_sql and dry.merge_sql.startswith("WITH src AS")
    assert sql("SELECT dry_run, status FROM pgstage.runs WHERE run_id = %s", (dry.run_id,)) == [(True, "succeeded")]
    assert [s["record"] for s in dry.sample_rejects] == [5]
    real = loader.run()
    assert real.counts == dry.counts
    assert (real.counts.inserted, real.counts.updated, real.counts.unchanged, real.counts.duplicate,
            real.counts.rejected) == (1, 1, 1, 1, 1)


def test_dry_run_without_a_target_predicts_inserts_and_creates_nothing(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n2,1,north,DE,b@x.com,10.00,0\n")
    before = snapshot(sql)
    result = CliRunner().invoke(app, ["run", str(loader.root / "spec.toml"), "--db", loader.db_url, "--dry-run",
                                      "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["dry_run"] is True and doc["rows"]["inserted"] == 2
    assert 'INSERT INTO "shop"."orders"' in doc["merge_sql"]
    assert snapshot(sql) == before
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]


def test_new_fields_fail_when_asked(loader: Loader, sql) -> None:
    setup_refs(sql)
    loader.spec(SPEC.format(unique="false", ratio=1.0, source='on_new_fields = "fail"', load=""))
    loader.write("orders.csv", HEADER.replace("\n", ",extra\n") + "1,1,north,DE,a@x.com,10.00,0,x\n")
    with pytest.raises(HeaderMismatch) as error:
        loader.run()
    assert error.value.exit_code == 2 and "fields the spec does not know: 'extra'" in str(error.value)
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]


def test_a_fixed_row_resolves_its_earlier_reject(loader: Loader, sql) -> None:
    setup_refs(sql)
    write(loader, "1,1,north,DE,a@x.com,10.00,0\n2,1,north,DE,b@x.com,-x,0\n3,9,north,DE,c@x.com,5,0\n")
    first = loader.run()
    assert first.counts.rejected == 2
    loader.write("orders.csv", HEADER + "2,1,north,DE,b@x.com,20.00,0\n")
    second = loader.run()
    assert second.counts.inserted == 1
    assert sql("SELECT record, resolved_by FROM pgstage.rejects ORDER BY record") == [
        (2, second.run_id), (3, None)]
    assert_identity(second)


def test_raw_column_keeps_the_whole_record_unknown_fields_included(loader: Loader, sql) -> None:
    setup_refs(sql)
    loader.spec(SPEC.format(unique="false", ratio=1.0, source='on_new_fields = "keep_raw"', load='raw_column = "_raw"'))
    loader.write("orders.csv", HEADER.replace("\n", ",utm_source\n") + "1,1,north,DE,A@x.com ,10.00,0,newsletter\n")
    report = loader.run()
    assert report.counts.inserted == 1 and report.files[0].ignored_fields == ("utm_source",)
    assert sql("SELECT email, _raw FROM shop.orders") == [("a@x.com", {
        "id": "1", "customer": "1", "region": "north", "country": "DE", "email": "A@x.com ",
        "total": "10.00", "refunded": "0", "utm_source": "newsletter"})]
    again = loader.run(force=True)
    assert again.counts.unchanged == 1


def test_keep_raw_without_a_raw_column_is_a_spec_error(loader: Loader) -> None:
    loader.spec(SPEC.format(unique="false", ratio=1.0, source='on_new_fields = "keep_raw"', load=""))
    with pytest.raises(SpecError) as error:
        pgstage.load_spec(loader.root / "spec.toml")
    assert "keep_raw" in str(error.value) and "load.raw_column" in str(error.value)
