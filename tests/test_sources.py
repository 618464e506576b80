"""Sources beyond a plain CSV file: compressed files and zip members (recognised by content),
globs over mixed files, missing partitions, JSON Lines and Parquet.

Inputs are generated here (compressed bytes and Parquet files do not belong in a case
folder); results go through the same checker as tests/cases (`run_and_check`), which asserts
the accounting identity, the ledger's counts, every reject's record number and rule, and the
target's final rows. JSON Lines cases that are plain text live in tests/cases/jsonl_*.
"""

from __future__ import annotations

import bz2
import datetime as dt
import decimal
import gzip
import io
import json
import sys
import zipfile
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import pgstage
from pgstage import faults
from pgstage.errors import HeaderMismatch, MissingDependency, SourceError, SpecError
from pgstage.pipeline.extract import csv as csv_extract
from pgstage.pipeline.extract import parquet as parquet_extract
from tests.conftest import assert_identity
from tests import specs
from tests.test_cases import run_and_check

SPEC = specs.template(name="sources", target="public.items", path="{path}", columns=specs.MESSY, kind="{kind}", strategy=None,
                      source="{source}", load="max_reject_ratio = {ratio}\n{load}")


def write_spec(loader, path: str, *, kind: str = "csv", source: str = "", load: str = "", ratio: float = 0.5) -> None:
    loader.spec(SPEC.format(kind=kind, path=path, source=source, load=load, ratio=ratio))


def rows(read: int, rejected: int, valid: int, *, duplicate: int = 0, inserted: int = 0, updated: int = 0,
         unchanged: int = 0) -> dict[str, int]:
    return {"read": read, "rejected": rejected, "valid": valid, "duplicate": duplicate, "inserted": inserted,
            "updated": updated, "unchanged": unchanged, "stale": 0, "deleted": 0}


def parse(record: int, message: str) -> dict[str, Any]:
    return {"record": record, "rules": ["parse"], "message_contains": message}


def zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def crash_after_merges(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The run dies (an error, not a transient fault) right after its n-th merged batch commits."""
    seen = {"merge.after": 0}

    def hit(point: str) -> None:
        if point == "merge.after":
            seen[point] += 1
            if seen[point] == n:
                raise RuntimeError("injected crash")

    monkeypatch.setattr(faults, "hit", hit)


CSV = b"id,name,amount\n1,apple,1.50\n2,banana\n3,cherry,3.00\n"
CSV_EXPECTED = {
    "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
    "rejects": [parse(2, "expected 3 fields, found 2")],
    "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
}
COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
}


# --- compression ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(COMPRESSORS))
def test_each_compression_is_recognised_by_content_not_by_name(loader, sql, fmt: str) -> None:
    """The name says .csv; the first bytes say gzip/bz2/zstd. A ragged row still goes through the quarantine."""
    write_spec(loader, "input.csv")
    loader.write("input.csv", COMPRESSORS[fmt](CSV))
    run_and_check(loader, sql, CSV_EXPECTED)


def test_a_plain_file_is_plain_whatever_its_name_and_first_letters(loader, sql) -> None:
    """A `.gz` name does not make gzip, and a header starting with bzip2's "BZh" is still text."""
    loader.spec(SPEC.format(kind="csv", path="input.csv.gz", source="", load="", ratio=0.5).replace(
        'from = "id"', 'from = "BZh id"'))
    loader.write("input.csv.gz", b"BZh id,name,amount\n1,apple,1.50\n")
    assert loader.run().counts.inserted == 1
    assert sql("SELECT id, name FROM items") == [(1, "apple")]


def test_zstd_with_several_frames(loader, sql) -> None:
    """pzstd and `cat a.zst b.zst` write several frames: all of them are read."""
    write_spec(loader, "input.csv.zst")
    compressor = zstandard.ZstdCompressor()
    loader.write("input.csv.zst", compressor.compress(CSV[:28]) + compressor.compress(CSV[28:]))
    run_and_check(loader, sql, CSV_EXPECTED)


def test_zip_with_two_members_loads_each_as_its_own_file(loader, sql) -> None:
    write_spec(loader, "drop.zip")
    loader.write("drop.zip", zip_bytes({
        "b.csv": b"id,name,amount\n3,cherry,3.00\n4,date\n1,apple-b,1.00\n",
        "a.csv": b"id,name,amount\n1,apple,1.50\n2,banana,2.00\n",
        "__MACOSX/._a.csv": b"\x00\x05\x16\x07 resource fork",
        "empty-dir/": b"",
    }))
    [report] = run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(5, 1, 4, duplicate=1, inserted=3),
        # Record numbers count within each member: record 2 of b.csv.
        "rejects": [parse(2, "expected 3 fields, found 2")],
        # Members load in name order; on a key in both, the later member (b.csv) wins.
        "target": [[1, "apple-b", 1.00], [2, "banana", 2.00], [3, "cherry", 3.00]],
    })
    root = loader.root
    assert [(f.path, f.counts.read, f.counts.rejected) for f in report.files] == [
        (f"{root}/drop.zip!a.csv", 2, 0), (f"{root}/drop.zip!b.csv", 3, 1)]
    assert sql("SELECT file, record FROM pgstage.rejects") == [(f"{root}/drop.zip!b.csv", 2)]
    # Each member is fingerprinted on its own: loaded again, both are skipped.
    assert [f.path for f in sorted(loader.run().files, key=lambda f: f.path)] == [
        f"{root}/drop.zip!a.csv", f"{root}/drop.zip!b.csv"]
    assert sql("SELECT count(*) FROM pgstage.files") == [(2,)]


def test_a_changed_zip_member_is_loaded_and_the_unchanged_one_skipped(loader, sql) -> None:
    write_spec(loader, "drop.zip")
    a = b"id,name,amount\n1,apple,1.50\n"
    loader.write("drop.zip", zip_bytes({"a.csv": a, "b.csv": b"id,name,amount\n2,banana,2.00\n"}))
    loader.run()
    loader.write("drop.zip", zip_bytes({"a.csv": a, "b.csv": b"id,name,amount\n2,banana,2.50\n"}))
    report = loader.run()
    assert [(f.path.rsplit("!", 1)[1], f.status) for f in report.files] == [("b.csv", "loaded"), ("a.csv", "skipped")]
    assert report.counts.updated == 1
    assert sql("SELECT id, amount FROM items ORDER BY id") == [(1, decimal.Decimal("1.50")), (2, decimal.Decimal("2.50"))]


def test_a_glob_over_plain_gzip_and_zip_files_loads_in_a_stable_order(loader, sql) -> None:
    write_spec(loader, "drop/*")
    loader.write("drop/1_plain.csv", b"id,name,amount\n1,one,1.00\n2,two,2.00\n")
    loader.write("drop/2_gzip.csv.gz", gzip.compress(b"id,name,amount\n2,two-gz,2.50\n3,three,3.00\n4,four\n"))
    loader.write("drop/3_archive.zip", zip_bytes({"x.csv": b"id,name,amount\n3,three-zip,3.50\n5,five,5.00\n",
                                                  "y.csv": b"id,name,amount\n6,six,6.00\n"}))
    [report] = run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(8, 1, 7, duplicate=2, inserted=5),
        "rejects": [parse(3, "expected 3 fields, found 2")],
        "target": [[1, "one", 1.00], [2, "two-gz", 2.50], [3, "three-zip", 3.50], [5, "five", 5.00],
                   [6, "six", 6.00]],
    })
    names = [f.path.removeprefix(f"{loader.root}/drop/") for f in report.files]
    assert names == ["1_plain.csv", "2_gzip.csv.gz", "3_archive.zip!x.csv", "3_archive.zip!y.csv"]
    assert [f.counts.read for f in report.files] == [2, 3, 2, 1]


def test_a_date_partition_picks_its_compressed_file(loader, sql) -> None:
    write_spec(loader, "orders_{date}.csv*")
    loader.write("orders_2024-01-15.csv.bz2", bz2.compress(b"id,name,amount\n15,fifteenth,1.00\n"))
    loader.write("orders_2024-01-16.csv.gz", gzip.compress(b"id,name,amount\n16,sixteenth,1.00\n"))
    report = loader.run(partition="2024-01-16")
    assert [f.path for f in report.files] == [f"{loader.root}/orders_2024-01-16.csv.gz"]
    assert sql("SELECT id, name FROM items") == [(16, "sixteenth")]


@pytest.mark.parametrize("fmt", ["gzip", "zstd", "zip"])
def test_a_crashed_compressed_file_resumes_after_its_last_merged_batch(loader, sql, monkeypatch, fmt: str) -> None:
    """Regression: resuming a compressed file skipped the wrong number of bytes (the buffered
    window was forgotten): an error for small files, silently lost rows for files over 4 MiB.
    Small windows here make the file span many of them."""
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", 64)
    write_spec(loader, "input.bin", load="batch_rows = 4")
    data = b"id,name,amount\n" + b"".join(f"{i},name{i},{i}.00\n".encode() for i in range(1, 31))
    loader.write("input.bin", zip_bytes({"m.csv": data}) if fmt == "zip" else COMPRESSORS[fmt](data))
    crash_after_merges(monkeypatch, 3)
    with pytest.raises(RuntimeError):
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert sql("SELECT count(*) FROM items") == [(12,)]
    monkeypatch.setattr(faults, "hit", lambda point: None)
    report = loader.run()
    assert report.status == "succeeded" and report.counts.read == 30 and report.counts.inserted == 30
    assert sql("SELECT count(*), sum(id), sum(amount) FROM items") == [(30, 465, decimal.Decimal("465.00"))]
    assert sql("SELECT array_agg(record_start ORDER BY batch_no) FROM pgstage.batches") == [
        ([1, 5, 9, 13, 17, 21, 25, 29],)]


@pytest.mark.parametrize("fmt", ["gzip", "bz2", "zstd"])
def test_a_truncated_compressed_file_is_a_source_error(loader, sql, fmt: str) -> None:
    write_spec(loader, "input.csv")
    big = b"id,name,amount\n" + b"".join(f"{i},n{i},{i}\n".encode() for i in range(5000))
    loader.write("input.csv", COMPRESSORS[fmt](big)[:-40])
    run_and_check(loader, sql, {"error": {"type": "SourceError", "exit_code": 1,
                                          "message_contains": ["truncated or corrupt"]}})


def test_a_broken_zip_is_a_source_error_before_anything_runs(loader) -> None:
    write_spec(loader, "drop.zip")
    loader.write("drop.zip", zip_bytes({"a.csv": CSV})[:-30])
    with pytest.raises(SourceError, match="not a readable zip archive"):
        loader.run()


# --- missing files --------------------------------------------------------------------------------


def test_a_missing_partition_file_is_an_error_that_names_the_way_out(loader) -> None:
    write_spec(loader, "orders_{date}.csv")
    with pytest.raises(SourceError) as failure:
        loader.run(partition="2024-01-15")
    message = str(failure.value)
    assert "no source file matches" in message and "orders_2024-01-15.csv for partition 2024-01-15" in message
    assert "source.allow_missing = true" in message
    assert failure.value.exit_code == 1


def test_allow_missing_skips_the_run_and_says_why(loader, sql) -> None:
    write_spec(loader, "orders_{date}.csv", source="allow_missing = true")
    report = loader.run(partition="2024-01-15")
    assert (report.status, report.files, report.counts.read) == ("skipped", (), 0)
    assert report.message == "no source file matches 'orders_{date}.csv' for partition 2024-01-15 (source.allow_missing = true)"
    assert sql("SELECT status, message FROM pgstage.runs") == [("skipped", report.message)]
    assert sql("SELECT to_regclass('public.items')") == [(None,)]
    # The file arrives later: the partition loads normally.
    loader.write("orders_2024-01-15.csv", b"id,name,amount\n1,apple,1.50\n")
    assert loader.run(partition="2024-01-15").counts.inserted == 1


# --- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_lines_no_text_column_can_hold_are_quarantined(loader, sql) -> None:
    """Bad UTF-8, a NUL byte, control bytes COPY uses as quote and delimiter, a lone `\\.`
    (end of data for COPY before PostgreSQL 18), a stray carriage return: each is one reject
    with its line number; the other lines load."""
    write_spec(loader, "input.jsonl", kind="jsonl", ratio=0.6)
    loader.write("input.jsonl", b"\n".join([
        b'{"id": 1, "name": "apple"}',
        b'{"id": 2, "name": "ban\xffana"}',
        b'{"id": 3, "name": "nul\x00"}',
        b'{"id": 4, "name": "ctl\x01\x02"}',
        b"\\.",
        b'{"id": 6,\r "name": "cr"}',
        b'{"id": 7, "name": "cherry", "amount": 7}',
    ]) + b"\n")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(7, 4, 3, inserted=3),
        "rejects": [parse(2, "invalid byte 0xff"), parse(3, "NUL"), parse(4, "invalid input syntax for type json"),
                    parse(5, "invalid input syntax for type json")],
        "target": [[1, "apple", None], [6, "cr", None], [7, "cherry", 7]],
    })


def test_jsonl_only_non_objects_take_the_copy_path(loader, sql) -> None:
    """Arrays and scalars are valid JSON: COPY takes the window, then they are swept out as parse rejects."""
    write_spec(loader, "input.jsonl", kind="jsonl", ratio=0.6)
    loader.write("input.jsonl", b'{"id": 1}\n[2]\n\n3\nnull\n{"id": 5, "name": {"nested": [1, 2]}}\n\n\n')
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(5, 3, 2, inserted=2),
        "rejects": [parse(2, "JSON array"), parse(4, "JSON number"), parse(5, "JSON null")],
        "target": [[1, None, None], [5, '{"nested": [1, 2]}', None]],
    })


def test_jsonl_dotted_keys_paths_array_indexes_crlf_and_bom(loader, sql) -> None:
    """A top-level key with dots (ECS logs: "log.level") wins over the path; a path may index
    arrays; CRLF line ends and a BOM are not data."""
    loader.spec("""
        [pipeline]
        name = "logs"
        target = "public.logs"
        key = ["id"]

        [source]
        kind = "jsonl"
        path = "logs.jsonl"
        null = ["-"]

        [columns]
        id    = { from = "id", type = "integer" }
        level = { from = "log.level", type = "text" }
        first = { from = "tags.0", type = "text" }
        city  = { from = "user.address.city", type = "text" }
        flag  = { from = "flag", type = "boolean" }
    """)
    lines = [
        {"id": 1, "log.level": "info", "log": {"level": "ignored"}, "tags": ["a", "b"], "user": {"address": {"city": "Oslo"}}, "flag": True},
        {"id": 2, "log": {"level": "warn"}, "tags": [], "user": {"address": None}, "flag": False},
        {"id": 3, "log": None, "tags": None, "user": {"address": {"city": "-"}}, "flag": None},
    ]
    loader.write("logs.jsonl", b"\xef\xbb\xbf" + b"".join(json.dumps(x).encode() + b"\r\n" for x in lines))
    report = loader.run()
    assert (report.counts.read, report.counts.inserted) == (3, 3)
    assert sql("SELECT id, level, first, city, flag FROM logs ORDER BY id") == [
        (1, "info", "a", "Oslo", True), (2, "warn", None, None, False), (3, None, None, None, None)]


def test_jsonl_resumes_at_a_line_boundary_in_a_compressed_file(loader, sql, monkeypatch) -> None:
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", 50)
    write_spec(loader, "input.jsonl.gz", kind="jsonl", load="batch_rows = 5")
    lines = [json.dumps({"id": i, "name": f"n{i}", "amount": i}) if i % 7 else "" for i in range(1, 41)]
    lines[20] = '{"id": 21, "name": '   # line 21 is broken
    loader.write("input.jsonl.gz", gzip.compress(("\n".join(lines) + "\n").encode()))
    crash_after_merges(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    monkeypatch.setattr(faults, "hit", lambda point: None)
    # Lines 7, 14, 21 (broken), 28 and 35 are not loaded; the rest are, once.
    expected_ids = [i for i in range(1, 41) if i % 7]
    report = loader.run()
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (36, 1, 35)
    assert sql("SELECT array_agg(id ORDER BY id) FROM items") == [(expected_ids,)]
    assert sql("SELECT record FROM pgstage.rejects") == [(21,)]
    ranges = sql("SELECT record_start, record_end FROM pgstage.batches ORDER BY batch_no")
    assert ranges[:3] == [(1, 5), (6, 11), (12, 17)]
    assert ranges[-1][1] == 40


def test_jsonl_from_a_zip_member_and_an_empty_file(loader, sql) -> None:
    write_spec(loader, "*.zip", kind="jsonl")
    loader.write("a.zip", zip_bytes({"a.jsonl": b'{"id": 1, "name": "zipped"}\n', "b.jsonl": b""}))
    report = loader.run()
    assert [(f.path.rsplit("!", 1)[1], f.counts.read) for f in report.files] == [("a.jsonl", 1)]
    assert sql("SELECT name FROM items") == [("zipped",)]
    assert sql("SELECT path FROM pgstage.files ORDER BY path") == [
        (f"{loader.root}/a.zip!a.jsonl",), (f"{loader.root}/a.zip!b.jsonl",)]


def test_csv_only_options_are_refused_for_other_kinds(loader) -> None:
    write_spec(loader, "input.jsonl", kind="jsonl", source='delimiter = ";"\nheader = false')
    with pytest.raises(SpecError) as failure:
        loader.run()
    assert failure.value.problems == (
        f"{loader.root}/spec.toml:10: source.delimiter: applies to CSV only; a jsonl source has no delimiter (remove the key)",
        f"{loader.root}/spec.toml:11: source.header: applies to CSV only; a jsonl source has no header (remove the key)")


# --- Parquet --------------------------------------------------------------------------------------

CUSTOMER = pa.struct([("email", pa.string()), ("address", pa.struct([("city", pa.string()), ("zip", pa.int32())]))])


def orders_table(n: int) -> pa.Table:
    """n orders; every 5th has a null customer, every 7th a customer with a null address."""
    def customer(i: int) -> dict[str, Any] | None:
        if i % 5 == 0:
            return None
        return {"email": f"U{i}@X.COM", "address": None if i % 7 == 0 else {"city": f"city{i}", "zip": 10000 + i}}

    return pa.table({
        "id": pa.array(range(1, n + 1), type=pa.int64()),
        "name": pa.array([None if i % 3 == 0 else f"order, \"{i}\"\nline 2" if i == 4 else f"order {i}"
                          for i in range(1, n + 1)]),
        "amount": pa.array([decimal.Decimal(f"{i}.25") for i in range(1, n + 1)], type=pa.decimal128(10, 2)),
        "paid": pa.array([i % 2 == 0 for i in range(1, n + 1)]),
        "ordered_at": pa.array([dt.datetime(2024, 1, 15, 10, 0, i % 60, 123456, tzinfo=dt.timezone.utc)
                                for i in range(1, n + 1)], type=pa.timestamp("us", tz="UTC")),
        "customer": pa.array([customer(i) for i in range(1, n + 1)], type=CUSTOMER),
        "tags": pa.array([["x"] for _ in range(n)]),
    })


PARQUET_SPEC = """
[pipeline]
name = "orders"
target = "public.orders"
key = ["id"]

[source]
kind = "parquet"
path = "{path}"

[columns]
id         = {{ from = "id", type = "bigint" }}
name       = {{ from = "name", type = "text" }}
amount     = {{ from = "amount", type = "money_cents", max = {max_cents} }}
paid       = {{ from = "paid", type = "boolean" }}
ordered_at = {{ from = "ordered_at", type = "timestamptz" }}
email      = {{ from = "customer.email", type = "text", normalize = ["lower"] }}
city       = {{ from = "customer.address.city", type = "text" }}
zip        = {{ from = "customer.address.zip", type = "integer" }}

[load]
max_reject_ratio = 0.5
{load}
"""


def expected_order(i: int) -> list[Any]:
    name = None if i % 3 == 0 else "order, \"4\"\nline 2" if i == 4 else f"order {i}"
    customer = i % 5 != 0
    address = customer and i % 7 != 0
    return [i, name, i * 100 + 25, i % 2 == 0, f"2024-01-15T10:00:{i % 60:02d}.123456+00:00",
            f"u{i}@x.com" if customer else None, f"city{i}" if address else None, 10000 + i if address else None]


def test_parquet_with_nested_structs_and_nulls(loader, sql) -> None:
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=2100, load=""))
    pq.write_table(orders_table(24), loader.root / "orders.parquet", row_group_size=10)
    [report] = run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(24, 4, 20, inserted=20),
        # amount is above max for ids 21..24: rule rejects, numbered by row (row index + 1).
        "rejects": [{"record": i, "rules": ["amount.max"]} for i in range(21, 25)],
        "target": [expected_order(i) for i in range(1, 21)],
    })
    # Fields the spec does not read are reported, and never staged (the list column could not be).
    assert report.files[0].ignored_fields == ("tags",)
    # A reject's raw values are the staged fields, by their dotted names; nulls stay null.
    raw = sql("SELECT raw FROM pgstage.rejects WHERE record = 21")[0][0]
    assert raw == {"id": "21", "name": None, "amount": "21.25", "paid": "false",
                   "ordered_at": "2024-01-15 10:00:21.123456Z", "customer.email": "U21@X.COM",
                   "customer.address.city": None, "customer.address.zip": None}


def test_parquet_batches_cross_row_groups_and_resume_at_a_row_index(loader, sql, monkeypatch) -> None:
    """Checkpoints of a Parquet file are row indexes (byte_start/byte_end in pgstage.batches)."""
    monkeypatch.setattr(parquet_extract, "WINDOW_ROWS", 4)
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=100_000, load="batch_rows = 7"))
    pq.write_table(orders_table(30), loader.root / "orders.parquet", row_group_size=9)
    crash_after_merges(monkeypatch, 2)
    with pytest.raises(RuntimeError):
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert sql("SELECT count(*) FROM orders") == [(14,)]
    monkeypatch.setattr(faults, "hit", lambda point: None)
    report = loader.run()
    assert_identity(report)
    assert (report.counts.read, report.counts.inserted) == (30, 30)
    assert sql("SELECT batch_no, byte_start, byte_end, record_start, record_end FROM pgstage.batches ORDER BY batch_no") == [
        (0, 0, 7, 1, 7), (1, 7, 14, 8, 14), (2, 14, 21, 15, 21), (3, 21, 28, 22, 28), (4, 28, 30, 29, 30)]
    got = sql("SELECT jsonb_build_array(id, name, amount, paid, ordered_at, email, city, zip) FROM orders ORDER BY id")
    assert [r[0] for r in got] == [expected_order(i) for i in range(1, 31)]


def test_parquet_field_problems_are_named(loader, sql) -> None:
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=1, load="").replace(
        '"customer.address.zip"', '"customer.adress.zip"'))
    pq.write_table(orders_table(3), loader.root / "orders.parquet")
    with pytest.raises(HeaderMismatch, match="'customer.adress.zip' is missing \\(did you mean 'customer.address.zip'\\?\\)"):
        loader.run()
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=1, load="").replace(
        '"customer.address.zip"', '"tags"'))
    with pytest.raises(SourceError, match=r"tags \(list<.*>\): list, map and union columns"):
        loader.run()


def test_parquet_inside_gzip_or_a_non_parquet_file_is_refused(loader) -> None:
    loader.spec(PARQUET_SPEC.format(path="orders.parquet.gz", max_cents=1, load=""))
    buffer = io.BytesIO()
    pq.write_table(orders_table(3), buffer)
    loader.write("orders.parquet.gz", gzip.compress(buffer.getvalue()))
    with pytest.raises(SourceError, match="must be read in place"):
        loader.run()
    loader.spec(PARQUET_SPEC.format(path="orders.csv", max_cents=1, load=""))
    loader.write("orders.csv", CSV)
    with pytest.raises(SourceError, match="not a readable Parquet file"):
        loader.run()


def test_without_pyarrow_parquet_names_the_extra(loader, monkeypatch) -> None:
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=1, load=""))
    pq.write_table(orders_table(3), loader.root / "orders.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow", None)   # `import pyarrow` now raises ImportError
    with pytest.raises(MissingDependency) as failure:
        loader.run()
    assert failure.value.hint == 'pip install "pgstage[parquet]"' and failure.value.exit_code == 2


def test_parquet_scalar_types_arrive_as_postgresql_reads_them(loader, sql) -> None:
    """Time zones are kept as instants (a Berlin timestamp lands as its UTC instant), naive
    timestamps are wall-clock time read as UTC, nanoseconds round to microseconds, binary
    columns holding UTF-8 (as old Hive and Spark write strings) are text, a dictionary column
    is its values; an empty Parquet file is a file with no records."""
    loader.spec("""
        [pipeline]
        name = "types"
        target = "public.types"
        key = ["id"]

        [source]
        kind = "parquet"
        path = "*.parquet"

        [columns]
        id     = { from = "id", type = "integer" }
        berlin = { from = "berlin", type = "timestamptz" }
        naive  = { from = "naive", type = "timestamptz" }
        nanos  = { from = "nanos", type = "timestamptz" }
        day    = { from = "day", type = "date" }
        label  = { from = "label", type = "text" }
        kind   = { from = "kind", type = "text" }
        ratio  = { from = "ratio", type = "double precision" }
    """)
    berlin = dt.datetime(2024, 7, 1, 12, 0, tzinfo=dt.timezone.utc)
    table = pa.table({
        "id": pa.array([1, 2], pa.int32()),
        "berlin": pa.array([berlin, None], pa.timestamp("us", tz="Europe/Berlin")),
        "naive": pa.array([dt.datetime(2024, 7, 1, 12, 0), None], pa.timestamp("ms")),
        "nanos": pa.array([1_719_835_200_123_456_789, None], pa.timestamp("ns", tz="UTC")),
        "day": pa.array([dt.date(2024, 2, 29), None]),
        "label": pa.array(["Grüße, \"quoted\"".encode(), None], pa.binary()),
        "kind": pa.array(["a", "b"]).dictionary_encode(),
        "ratio": pa.array([0.1, None], pa.float32()),
    })
    pq.write_table(table, loader.root / "a.parquet")
    pq.write_table(table.slice(0, 0), loader.root / "b_empty.parquet")
    report = loader.run()
    assert [(f.path.rsplit("/", 1)[1], f.counts.read) for f in report.files] == [("a.parquet", 2)]
    assert sql("SELECT id, berlin::text, naive::text, nanos::text, day::text, label, kind, ratio::real FROM types ORDER BY id") == [
        (1, "2024-07-01 12:00:00+00", "2024-07-01 12:00:00+00", "2024-07-01 12:00:00.123457+00", "2024-02-29",
         'Grüße, "quoted"', "a", pytest.approx(0.1)),
        (2, None, None, None, None, None, "b", None)]
    assert sql("SELECT count(*) FROM pgstage.files") == [(2,)]


def test_parquet_bytes_that_are_not_text_are_named(loader) -> None:
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=1, load="").replace(
        '"customer.address.zip"', '"blob"'))
    pq.write_table(orders_table(3).append_column("blob", pa.array([b"ok", b"\xff\xfe", None])), loader.root / "orders.parquet")
    with pytest.raises(SourceError, match="column 'blob' holds bytes that are not UTF-8 text \\(rows 1-3\\)"):
        loader.run()


def test_a_parquet_value_postgresql_cannot_hold_is_quarantined_with_its_row_number(loader, sql) -> None:
    """A NUL inside a string: the CSV window goes through the same quarantine as a CSV file's."""
    write_spec(loader, "input.parquet", kind="parquet")
    pq.write_table(pa.table({"id": [1, 2, 3], "name": ["apple", "ba\x00nana", "cherry"], "amount": [1.5, 2.0, 3.0]}),
                   loader.root / "input.parquet")
    run_and_check(loader, sql, {
        "status": "succeeded", "rows": rows(3, 1, 2, inserted=2),
        "rejects": [parse(2, "NUL")],
        "target": [[1, "apple", 1.50], [3, "cherry", 3.00]],
    })


def test_parquet_raw_column_keeps_every_field_text_can_carry(loader, sql) -> None:
    """With load.raw_column, the fields the spec does not read are staged too, so the whole
    record reaches the target (a list column cannot be text and stays out)."""
    loader.spec(PARQUET_SPEC.format(path="orders.parquet", max_cents=100_000, load='raw_column = "_raw"'))
    pq.write_table(orders_table(2).append_column("note", pa.array(["n1", None])), loader.root / "orders.parquet")
    report = loader.run()
    assert report.files[0].ignored_fields == ("tags", "note")
    raw = sql("SELECT _raw FROM orders WHERE id = 1")[0][0]
    assert raw["note"] == "n1" and raw["customer.address.city"] == "city1" and "tags" not in raw
    assert sql("SELECT email, city FROM orders ORDER BY id") == [("u1@x.com", "city1"), ("u2@x.com", "city2")]
