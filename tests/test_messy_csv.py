"""Messy CSV whose bytes are awkward to keep in a case folder (BOM, NUL, 0xff, CRLF, latin-1,
gzip), generated files (20,000 rows), and known bugs. Inputs are written from the test with
`loader.write(name, b"...")`; results are checked with the same checker as tests/cases
(`run_and_check`), against expectations computed by hand from the bytes below.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from pgstage.errors import PgstageError, RejectLimitExceeded
from pgstage.pipeline.extract import csv as csv_extract
from tests import specs
from tests.test_cases import run_and_check

SPEC = specs.template(name="messy", target="public.items", path="{path}", columns=specs.MESSY, source="{source}",
                      load="max_reject_ratio = {ratio}\n{load}")


def write_spec(loader, *, path: str = "input.csv", source: str = "", load: str = "", ratio: float = 0.5,
               name: str = "spec.toml", target: str = "public.items") -> None:
    text = SPEC.format(path=path, source=source, load=load, ratio=ratio).replace("public.items", target)
    loader.spec(text, name)


def rows(read: int, rejected: int, valid: int, *, duplicate: int = 0, inserted: int = 0, updated: int = 0,
         unchanged: int = 0, stale: int = 0) -> dict[str, int]:
    return {"read": read, "rejected": rejected, "valid": valid, "duplicate": duplicate, "inserted": inserted,
            "updated": updated, "unchanged": unchanged, "stale": stale, "deleted": 0}


def parse(record: int, message: str) -> dict[str, Any]:
    return {"record": record, "rules": ["parse"], "message_contains": message}


# --- encodings and odd bytes ----------------------------------------------------------------------


def test_invalid_utf8_byte_quarantines_only_that_record(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,name,amount\n1,apple,1.50\n2,ban\xffana,2.00\n3,cherry,3.00\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "invalid byte 0xff")],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })
    # The raw record is kept, the bad byte written visibly.
    assert sql("SELECT raw->>'_record' FROM pgstage.rejects") == [("2,ban\\xffana,2.00",)]


def test_nul_byte_quarantines_only_that_record(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,name,amount\n1,apple,1.50\n2,ban\x00ana,2.00\n3,cherry,3.00\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "NUL")],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })


def test_utf8_bom_before_the_header_is_not_part_of_the_first_name(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"\xef\xbb\xbfid,name,amount\n1,apple,1.50\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(1, 0, 1, inserted=1), "rejects": [], "ignored_fields": [],
        "target": [[1, "apple", 1.50]],
    })


def test_a_file_holding_only_a_bom_is_empty(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"\xef\xbb\xbf")
    run_and_check(loader, sql, {"error": {"type": "SourceError", "exit_code": 1, "message_contains": ["is empty"]}})


@pytest.mark.parametrize("ragged", [False, True], ids=["copy", "quarantine"])
def test_semicolon_delimited_latin1_loads_as_utf8(loader, sql, ragged: bool) -> None:
    """With a ragged record, the window goes through the quarantine: its good records must
    still arrive as proper text."""
    loader.spec("""
        [pipeline]
        name = "latin1"
        target = "public.people"
        key = ["id"]

        [source]
        path = "input.csv"
        delimiter = ";"
        encoding = "latin-1"

        [columns]
        id     = { from = "id", type = "integer", required = true }
        name   = { from = "Name", type = "text" }
        street = { from = "Straße", type = "text" }
        amount = { from = "amount", type = "numeric(10,2)" }

        [load]
        max_reject_ratio = 0.5
    """)
    text = ("id;Name;Straße;amount\n"
            "1;Müller;Hauptstraße 1;1.50\n"
            "2;Åsa;Große Allee;2.00\n"
            + ("3;Nobody\n" if ragged else "")
            + "4;Zoë;Öl, Weg 3;4.00\n")
    loader.write("input.csv", text.encode("latin-1"))
    run_and_check(loader, sql, {
        "status": "succeeded",
        "rows": rows(4, 1, 3, inserted=3) if ragged else rows(3, 0, 3, inserted=3),
        "rejects": [parse(3, "expected 4 fields, found 2")] if ragged else [],
        "target": [[1, "Müller", "Hauptstraße 1", 1.50], [2, "Åsa", "Große Allee", 2.00], [4, "Zoë", "Öl, Weg 3", 4.00]],
    })
    # Stored as UTF-8: "Müller" is 6 characters, 7 bytes.
    assert sql("SELECT length(name), octet_length(name) FROM people WHERE id = 1") == [(6, 7)]


# --- line endings ---------------------------------------------------------------------------------


def test_crlf_line_endings_leave_no_carriage_return_in_values(loader, sql) -> None:
    write_spec(loader)
    # name is the last field, where a stray \r would end up; a blank CRLF line ends the file.
    loader.write("input.csv", b"id,amount,name\r\n1,1.50,apple\r\n2,2.00,banana\r\n\r\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(2, 0, 2, inserted=2), "rejects": [],
        "target": [[1, "apple", 1.50], [2, "banana", 2.00]],
    })


def test_crlf_line_endings_through_the_quarantine(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,amount,name\r\n1,1.50,apple\r\n2,2.00\r\n3,3.00,cherry\r\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "expected 3 fields, found 2")],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })


def test_a_lone_carriage_return_inside_a_record_is_quarantined(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,name,amount\n1,apple,1.50\n2,ban\rana,2.00\n3,cherry,3.00\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [{"record": 2, "rules": ["parse"]}],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })


# --- compression ----------------------------------------------------------------------------------


def test_gzip_input_is_decompressed(loader, sql) -> None:
    write_spec(loader, path="input.csv.gz")
    loader.write("input.csv.gz", gzip.compress(b"id,name,amount\n1,apple,1.50\n2,banana\n3,cherry,3.00\n"))
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "expected 3 fields, found 2")],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })


def test_truncated_gzip_fails_as_a_source_error(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", gzip.compress(b"id,name,amount\n1,apple,1.50\n2,banana,2.00\n")[:-12])
    run_and_check(loader, sql, {"error": {"type": "SourceError", "exit_code": 1, "message_contains": ["truncated"]}})


# --- many rows ------------------------------------------------------------------------------------

N = 20_000
RAGGED = {1: "1,name1", 7_777: "7777,name7777,7777.00,extra", 20_000: "20000,name20000"}


def _twenty_thousand(multiline_every: int | None = None) -> tuple[bytes, list[list[Any]]]:
    """N records; the RAGGED ones a field short or long; optionally some names spanning two lines."""
    lines, target = ["id,name,amount"], []
    for i in range(1, N + 1):
        if i in RAGGED:
            lines.append(RAGGED[i])
            continue
        name = f"name{i}\nsecond line" if multiline_every and i % multiline_every == 0 else f"name{i}"
        lines.append(f'{i},"{name}",{i}.00' if "\n" in name else f"{i},{name},{i}.00")
        target.append([i, name, i])
    return ("\n".join(lines) + "\n").encode(), target


EXPECT_20K_REJECTS = [parse(1, "expected 3 fields, found 2"), parse(7_777, "expected 3 fields, found 4"),
                      parse(20_000, "expected 3 fields, found 2")]


def test_twenty_thousand_rows_with_three_ragged(loader, sql) -> None:
    write_spec(loader, ratio=0.001)
    data, target = _twenty_thousand()
    loader.write("input.csv", data)
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(20_000, 3, 19_997, inserted=19_997),
        "rejects": EXPECT_20K_REJECTS, "target": target,
    })


def test_twenty_thousand_rows_in_small_windows_and_batches(loader, sql, monkeypatch) -> None:
    """Many 4 KiB windows and 1,000-record batches, some records spanning two lines: record
    numbers still count records across window and batch boundaries."""
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", 4096)
    write_spec(loader, ratio=0.001, load="batch_rows = 1000")
    data, target = _twenty_thousand(multiline_every=97)
    loader.write("input.csv", data)
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(20_000, 3, 19_997, inserted=19_997),
        "rejects": EXPECT_20K_REJECTS, "target": target,
    })


def test_a_field_larger_than_128_kib_loads(loader, sql) -> None:
    write_spec(loader)
    big = "x" * 200_000
    loader.write("input.csv", f"id,name,amount\n1,{big},1.50\n3,cherry,3.00\n".encode())
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(2, 0, 2, inserted=2), "rejects": [],
        "target": [[1, big, 1.50], [3, "cherry", 3.00]],
    })


# --- bugs found by this corpus, now fixed -----------------------------------------------------------


def test_a_large_field_survives_a_broken_neighbour(loader, sql) -> None:
    write_spec(loader, ratio=1.0)
    big = "x" * 200_000
    loader.write("input.csv", f"id,name,amount\n1,{big},1.50\n2,banana\n3,cherry,3.00\n".encode())
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "expected 3 fields, found 2")],
        "target": [[1, big, 1.50], [3, "cherry", 3.00]],
    })


def test_record_numbers_survive_a_large_multi_line_field_in_a_broken_window(loader, sql) -> None:
    write_spec(loader, ratio=1.0)
    big = "y" * 140_000 + "\nz"
    loader.write("input.csv", f'id,name,amount\n1,"{big}",1.50\n2,banana\n3,cherry,3.00\n'.encode())
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "expected 3 fields, found 2")],
        "target": [[1, big, 1.50], [3, "cherry", 3.00]],
    })


def test_a_value_does_not_depend_on_its_neighbours(loader, sql) -> None:
    write_spec(loader, name="alone.toml", target="public.alone", path="alone.csv")
    write_spec(loader, name="beside.toml", target="public.beside", path="beside.csv")
    loader.write("alone.csv", b'id,name,amount\n1, "x",1.50\n')
    loader.write("beside.csv", b'id,name,amount\n1, "x",1.50\n2,banana\n')
    loader.run("alone.toml")
    loader.run("beside.toml")
    assert sql("SELECT name FROM public.alone") == sql("SELECT name FROM public.beside")


def test_a_nul_byte_in_an_unused_header_name(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,name,amount,no\x00te\n1,apple,1.50,x\n")
    try:
        report = loader.run()
    except PgstageError as exc:
        pytest.fail(f"{type(exc).__name__}: {exc}")
    assert report.status == "succeeded"
    assert sql("SELECT id, name FROM items") == [(1, "apple")]


def test_a_reject_keeps_every_raw_value_under_repeated_header_names(loader, sql) -> None:
    write_spec(loader)
    loader.write("input.csv", b"id,note,name,amount,note\n1,first-note,apple,zz,second-note\n2,,banana,2.00,\n")
    report = loader.run()
    assert report.counts.rejected == 1
    raw = json.dumps(sql("SELECT raw FROM pgstage.rejects")[0][0])
    assert "first-note" in raw and "second-note" in raw, raw


def test_a_blank_line_in_a_one_column_file_is_an_empty_value(loader, sql) -> None:
    """In CSV a one-field record holding an empty value IS a blank line: the two cannot be told apart,
    so pgstage reads it as COPY does, a record with a NULL value (docs/spec.md says so)."""
    loader.spec("""
        [pipeline]
        name = "ids"
        target = "public.ids"
        key = ["id"]

        [source]
        path = "input.csv"

        [columns]
        id = { from = "id", type = "integer", required = true }
    """)
    loader.write("input.csv", b"id\n1\n\n2\n")
    with pytest.raises(RejectLimitExceeded):
        loader.run()
    assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects") == [(2, "required")]


def test_utf8_sig_encoding_loads_like_utf8(loader, sql) -> None:
    write_spec(loader, source='encoding = "utf-8-sig"', ratio=1.0)
    big = "x" * 200_000
    loader.write("input.csv", f"\ufeffid,name,amount\n1,{big},1.50\n2,Müller,2.00\n".encode())
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(2, 0, 2, inserted=2), "rejects": [],
        "target": [[1, big, 1.50], [2, "Müller", 2.00]],
    })
