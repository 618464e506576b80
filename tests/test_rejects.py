"""`pgstage rejects`: a run's rejects read back exactly, filtered by rule, exported, fixed and reloaded."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pgstage.cli import app, render
from pgstage.rejects import Reason, RejectRow, export_rejects, list_rejects

runner = CliRunner()

SPEC = r"""
[pipeline]
name = "orders"
target = "shop.orders"
key = ["id"]

[source]
path = "orders.csv"

[columns]
id = { from = "Order Id", type = "bigint", required = true }
amount_cents = { from = "Total", type = "money_cents", required = true, min = 0 }
currency = { from = "Currency", type = "char(3)", normalize = ["trim", "upper"], in = ["USD", "EUR"] }
email = { from = "Email", type = "text", regex = '^[^@\s]+@[^@\s]+$' }
ordered_on = { from = "Date", type = "date" }

[load]
max_reject_ratio = 0.9
"""

# The header is deliberately not in alphabetical order: the export must keep the file's order.
ORDERS = (
    "Order Id,Total,Currency,Email,Date,Note\n"
    "1,10.00,usd,a@x.com,2024-01-01,ok\n"
    "2,-5.00,USD,b@x.com,2024-01-02,negative\n"
    '3,7.50,GBP,c@x.com,2024-01-03,"bad, currency"\n'
    "4,abc,EUR,not-an-email,2024-01-04,two problems\n"
    "5,3.00,EUR,e@x.com,2024-02-30,bad date\n"
    "6,1.00,USD,f@x.com,2024-01-06,ok\n"
    "7,2.00,USD,g@x.com,2024-01-07,ragged,extra\n"
    "8,,USD,h@x.com,2024-01-08,missing total\n"
)
HEADER = ["Order Id", "Total", "Currency", "Email", "Date", "Note"]
AMOUNT_MESSAGE = "'abc' is not an amount (digits, optional thousands separators, at most 2 decimals)"


def raw(*values: str | None) -> dict[str, str | None]:
    return dict(zip(HEADER, values))


@pytest.fixture
def loaded(loader) -> tuple[int, str]:
    """One run with rejects of several kinds (min, in, type, regex, required, parse); returns (run id, file)."""
    loader.spec(SPEC)
    source = loader.write("orders.csv", ORDERS)
    report = loader.run()
    assert report.status == "succeeded"
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (8, 6, 2)
    assert report.run_id is not None
    return report.run_id, str(source)


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table (cells stripped), header excluded."""
    lines = [line for line in output.splitlines() if "│" in line]
    return [[cell.strip() for cell in line.split("│")] for line in lines]


def test_list_rejects_reads_every_reason_and_raw_value_in_file_order(loaded, loader) -> None:
    run_id, file = loaded
    rows = list_rejects(run_id, db=loader.db_url)
    assert rows == [
        RejectRow(file, 2, (Reason("amount_cents", "min", "-500 is below the minimum 0"),),
                  raw("2", "-5.00", "USD", "b@x.com", "2024-01-02", "negative")),
        RejectRow(file, 3, (Reason("currency", "in", "'GBP' is not one of USD, EUR"),),
                  raw("3", "7.50", "GBP", "c@x.com", "2024-01-03", "bad, currency")),
        RejectRow(file, 4, (Reason("amount_cents", "type", AMOUNT_MESSAGE),
                            Reason("email", "regex", r"'not-an-email' does not match ^[^@\s]+@[^@\s]+$")),
                  raw("4", "abc", "EUR", "not-an-email", "2024-01-04", "two problems")),
        RejectRow(file, 5, (Reason("ordered_on", "type", 'date/time field value out of range: "2024-02-30"'),),
                  raw("5", "3.00", "EUR", "e@x.com", "2024-02-30", "bad date")),
        RejectRow(file, 7, (Reason(None, "parse", "expected 6 fields, found 7"),),
                  {"_record": "7,2.00,USD,g@x.com,2024-01-07,ragged,extra"}),
        RejectRow(file, 8, (Reason("amount_cents", "required", "missing value"),),
                  raw("8", None, "USD", "h@x.com", "2024-01-08", "missing total")),
    ]
    assert [list(r.raw) for r in rows if not r.unreadable] == [HEADER] * 5
    assert [r.record for r in list_rejects(run_id, db=loader.db_url, limit=2)] == [2, 3]
    assert [r.record for r in list_rejects(run_id, db=loader.db_url, rule="type")] == [4, 5]
    assert [r.record for r in list_rejects(run_id, db=loader.db_url, rule="amount_cents.type")] == [4]
    assert [r.record for r in list_rejects(run_id, db=loader.db_url, rule="parse")] == [7]
    assert list_rejects(run_id, db=loader.db_url, rule="no_such_rule") == []


def test_source_gone_falls_back_to_sorted_keys(loaded, loader) -> None:
    run_id, file = loaded
    Path(file).unlink()
    row = list_rejects(run_id, db=loader.db_url, rule="min")[0]
    assert list(row.raw) == sorted(HEADER)


def test_cli_table_rows_for_a_rule(loaded, loader, monkeypatch) -> None:
    run_id, _ = loaded
    monkeypatch.setattr(render.console, "width", 400)   # no wrapping: one line per row
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--rule", "amount_cents.min")
    assert code == 0, out
    assert [c.strip() for c in out.splitlines()[0].split("┃")] == ["record", "reasons", "raw values"]
    assert table_rows(out) == [
        ["2", "amount_cents.min: -500 is below the minimum 0",
         "Order Id=2, Total=-5.00, Currency=USD, Email=b@x.com, Date=2024-01-02, Note=negative"],
    ]
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--rule", "type")
    assert table_rows(out) == [
        ["4", f"amount_cents.type: {AMOUNT_MESSAGE}; email.regex: 'not-an-email' does not match ^[^@\\s]+@[^@\\s]+$",
         "Order Id=4, Total=abc, Currency=EUR, Email=not-an-email, Date=2024-01-04, Note=two problems"],
        ["5", 'ordered_on.type: date/time field value out of range: "2024-02-30"',
         "Order Id=5, Total=3.00, Currency=EUR, Email=e@x.com, Date=2024-02-30, Note=bad date"],
    ]
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--rule", "parse")
    assert table_rows(out) == [["7", "parse: expected 6 fields, found 7", "7,2.00,USD,g@x.com,2024-01-07,ragged,extra"]]
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--rule", "min", "--json")
    assert code == 0 and [r["record"] for r in json.loads(out)] == [2]
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--rule", "amount.min")
    assert code == 0 and "no rejects match rule 'amount.min'" in out and "amount_cents.min" in out


def test_cli_errors(loaded, loader, tmp_path: Path) -> None:
    run_id, _ = loaded
    code, out = invoke("rejects", "99", "--db", loader.db_url)
    assert code == 2 and "there is no run 99 in this database" in out
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--export", str(tmp_path / "x.txt"))
    assert code == 2 and "cannot tell the export format" in out
    assert not (tmp_path / "x.txt").exists()


def test_export_fix_and_reload(loaded, loader, sql) -> None:
    run_id, file = loaded
    exported = loader.root / "rejects.csv"
    code, out = invoke("rejects", str(run_id), "--db", loader.db_url, "--export", str(exported))
    assert code == 0 and f"wrote 6 reject(s) of run {run_id} to {exported}" in out.replace("\n", "")
    text = exported.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "Order Id,Total,Currency,Email,Date,Note,_file,_record,_reasons,_raw"
    assert text.splitlines()[5] == f',,,,,,{file},7,"parse: expected 6 fields, found 7","7,2.00,USD,g@x.com,2024-01-07,ragged,extra"'
    records = list(csv.DictReader(io.StringIO(text)))
    assert [r["_record"] for r in records] == ["2", "3", "4", "5", "7", "8"]

    # What a person would do: fix each bad value, re-split the record COPY could not read.
    fixes = {"2": {"Total": "5.00"}, "3": {"Currency": "EUR"}, "4": {"Total": "4.00", "Email": "d@x.com"},
             "5": {"Date": "2024-02-29"}, "8": {"Total": "8.00"}}
    for record in records:
        if record["_raw"]:
            fields = next(csv.reader([record["_raw"]]))
            record.update(dict(zip(HEADER, fields[:len(HEADER)])))
        record.update(fixes.get(record["_record"], {}))
    fixed = io.StringIO()
    writer = csv.DictWriter(fixed, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    loader.write("fixed.csv", fixed.getvalue())
    loader.spec(SPEC.replace('path = "orders.csv"', 'path = "fixed.csv"'), name="fixed.toml")

    report = loader.run("fixed.toml")
    assert report.status == "succeeded"
    assert report.counts.as_dict() == {"read": 6, "rejected": 0, "valid": 6, "duplicate": 0, "inserted": 6,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert set(report.files[0].ignored_fields) == {"Note", "_file", "_record", "_reasons", "_raw"}
    assert sql("SELECT id, amount_cents, currency, email, ordered_on::text FROM shop.orders ORDER BY id") == [
        (1, 1000, "USD", "a@x.com", "2024-01-01"), (2, 500, "USD", "b@x.com", "2024-01-02"),
        (3, 750, "EUR", "c@x.com", "2024-01-03"), (4, 400, "EUR", "d@x.com", "2024-01-04"),
        (5, 300, "EUR", "e@x.com", "2024-02-29"), (6, 100, "USD", "f@x.com", "2024-01-06"),
        (7, 200, "USD", "g@x.com", "2024-01-07"), (8, 800, "USD", "h@x.com", "2024-01-08"),
    ]
    # The reload marks the rejects it fixed; a record COPY could not read has no key to match.
    r = report.run_id
    assert sql("SELECT record, resolved_by FROM pgstage.rejects WHERE run_id = %s ORDER BY record", (run_id,)) == [
        (2, r), (3, r), (4, r), (5, r), (7, None), (8, r)]


def test_export_jsonl_and_a_semicolon_source(loader) -> None:
    """JSON Lines keeps reasons as objects; a CSV export is written with the spec's own delimiter."""
    loader.spec(SPEC.replace('path = "orders.csv"', 'path = "orders.csv"\ndelimiter = ";"'))
    loader.write("orders.csv", "Order Id;Total;Currency;Email;Date;Note\n1;1,234.50;USD;a@x.com;2024-01-01;x;y\n"
                               "2;-1;USD;b@x.com;2024-01-02;\"a \"\"quote\"\"\"\n3;5.00;EUR;c@x.com;2024-01-03;ok\n")
    report = loader.run()
    assert report.run_id is not None and report.counts.rejected == 2
    n = export_rejects(report.run_id, loader.root / "r.jsonl", db=loader.db_url)
    lines = (loader.root / "r.jsonl").read_text(encoding="utf-8").splitlines()
    assert n == 2 and json.loads(lines[1]) == {
        "file": str(loader.root / "orders.csv"), "record": 2,
        "reasons": [{"column": "amount_cents", "rule": "min", "message": "-100 is below the minimum 0"}],
        "raw": raw("2", "-1", "USD", "b@x.com", "2024-01-02", 'a "quote"')}
    assert list(json.loads(lines[1])["raw"]) == HEADER
    assert export_rejects(report.run_id, loader.root / "r.csv", db=loader.db_url, rule="min") == 1
    assert (loader.root / "r.csv").read_text(encoding="utf-8").splitlines() == [
        "Order Id;Total;Currency;Email;Date;Note;_file;_record;_reasons;_raw",
        f'2;-1;USD;b@x.com;2024-01-02;"a ""quote""";{loader.root / "orders.csv"};2;'
        "amount_cents.min: -100 is below the minimum 0;",
    ]
