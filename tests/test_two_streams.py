"""A file's first two batches staged on two COPY streams (pgstage/pipeline/two_streams.py).

Batch 1 starts where one stream would have ended batch 0, numbered from the record after it:
the prediction counts records the way COPY reads them (quoted newlines, blank lines), and is
checked when batch 0 ends. Every test here compares the load with an expectation computed
from the records as written, and says which way the file was staged by the run's events.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from pgstage.ops import logs
from pgstage.pipeline import two_streams
from pgstage.pipeline.extract import csv as extract_csv
from pgstage.pipeline.extract.files import fingerprint
from pgstage.workers import Workers
from tests.conftest import Loader, assert_identity

SPEC = """
[pipeline]
name = "two"
target = "app.notes"
key = ["id"]

[source]
path = "{path}"

[columns]
id = {{ from = "id", type = "integer", required = true }}
note = {{ from = "note", type = "text" }}
amount = {{ from = "amount", type = "numeric(10,2)", min = 0 }}

[load]
batch_rows = {batch_rows}
workers = 2
max_reject_ratio = 0.5
"""

HEADER = "id,note,amount\r\n"


def record(i: int, note: str = "", amount: str = "1.00") -> str:
    """One CSV record as an exporter writes it (a value with a quote, comma or line break is quoted)."""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow([str(i), note or f"note {i} " + "x" * 20, amount])
    return out.getvalue()


def note_of(i: int, records: dict[int, tuple[str, str]]) -> str:
    return records.get(i, ("", ""))[0] or f"note {i} " + "x" * 20


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    """The run's staging events, as the logs carry them."""
    seen: list[tuple[str, dict[str, Any]]] = []
    stop = logs.listen(lambda event, fields: seen.append((event, fields))
                       if event in ("one stream", "two streams", "batch staged") else None)
    yield seen
    stop()


@pytest.fixture
def small_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """256-byte windows, so that a small file's batches span several windows as a large file's do
    (with 4 MB windows a test file is one window, and a batch ends on its line cap)."""
    monkeypatch.setattr(extract_csv, "WINDOW_BYTES", 256)


def streams(seen: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, Any]]:
    return [(name, fields.get("why", fields.get("from_record"))) for name, fields in seen
            if name in ("one stream", "two streams")]


def write(loader: Loader, name: str, body: str, batch_rows: int = 10, *, compress: bool = False) -> Path:
    data = (HEADER + body).encode()
    loader.write(name, gzip.compress(data) if compress else data)
    return loader.spec(SPEC.format(path=name, batch_rows=batch_rows))


# Records 1..35; record 9 holds a quoted note over three lines, so a count of lines would put
# the end of batch 0 (10 records) two lines early, in the middle of record 10's neighbour; a
# negative amount in each of the first two batches is rejected with its record number.
SPECIAL = {9: ("first line\r\nsecond, \"quoted\"\r\nthird", "1.00"), 4: ("", "-4"), 13: ("", "-13")}


def body(n: int = 35, special: dict[int, tuple[str, str]] | None = None) -> str:
    special = SPECIAL if special is None else special
    return "".join(record(i, *special.get(i, ("", "1.00"))) for i in range(1, n + 1))


def expected_rows(n: int = 35, special: dict[int, tuple[str, str]] | None = None) -> list[tuple[Any, ...]]:
    special = SPECIAL if special is None else special
    return [(i, note_of(i, special), f"{special.get(i, ('', '1.00'))[1]}") for i in range(1, n + 1)
            if not special.get(i, ("", "1.00"))[1].startswith("-")]


def target(sql: Any) -> list[tuple[Any, ...]]:
    return [(i, note, str(amount)) for i, note, amount in sql("SELECT id, note, amount FROM app.notes ORDER BY id")]


def ledger(sql: Any, run_id: int | None) -> list[tuple[Any, ...]]:
    return sql("SELECT batch_no, byte_start, byte_end, record_start, record_end, status FROM pgstage.batches"
               " WHERE run_id = %s ORDER BY batch_no", (run_id,))


def no_run_tables(sql: Any) -> None:
    assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []


# --- counting records --------------------------------------------------------------------------------

values = st.text(st.sampled_from(list('ab ,"\r\n\'é')), max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(values, values), min_size=1, max_size=12),
       blanks=st.lists(st.integers(0, 12), max_size=3))
def test_records_in_counts_what_copy_reads(rows: list[tuple[str, str]], blanks: list[int], sql: Any,
                                           db_url: str) -> None:
    """Quoted commas, quotes and line breaks, and blank lines between records: the count is the
    number of records written, and PostgreSQL's COPY reads as many. (COPY refuses a blank line in a
    file of several fields; staging's screen then reads it as no record, as counted here.)"""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    for i, row in enumerate(rows):
        out.write("\r\n" * blanks.count(i))
        writer.writerow(row)
    data = out.getvalue().encode()
    assert two_streams.records_in(data, b'"', 2) == len(rows)
    if blanks:
        return
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE w (a text, b text)")
        with cur.copy("COPY w FROM STDIN (FORMAT csv)") as copy:
            copy.write(data)
        assert cur.execute("SELECT count(*) FROM w").fetchone() == (len(rows),)


def records_by_hand(data: bytes, quote: bytes, n_fields: int) -> int:
    """The quote rule, byte by byte: a newline outside quotes ends a line, and a line that is empty
    (or a lone carriage return) is no record in a file of several fields."""
    count, quoted, line = 0, False, b""
    for byte in data:
        char = bytes([byte])
        if char == quote:
            quoted = not quoted
        if char == b"\n" and not quoted:
            count += n_fields == 1 or line not in (b"", b"\r")
            line = b""
        else:
            line += char
    return count


@settings(max_examples=300, deadline=None)
@given(data=st.binary().map(lambda b: bytes(b'ab,"\r\n'[x % 6] for x in b)), n_fields=st.sampled_from([1, 2]))
def test_records_in_follows_the_quote_rule_on_any_bytes(data: bytes, n_fields: int) -> None:
    """Whatever the bytes (blank lines in and out of quotes, lone carriage returns, unpaired quotes):
    the fast count for windows without a blank line and the exact one around blank lines agree with
    the rule applied byte by byte."""
    assert two_streams.records_in(data, b'"', n_fields) == records_by_hand(data, b'"', n_fields)


def test_records_in_on_the_users_quoted_notes() -> None:
    """The 9-column file's notes (benchmarks/data9.py): quoted, with commas, doubled quotes and a line
    break, among plain and empty notes; a blank line after a quoted note; a quoted blank line."""
    notes = ['"Ring twice, then ""wait"";\ngate code 7"', "", "leave at the door", '"Fragile: glass\nthanks, 9"']
    window = "".join(f"{i},{notes[i % 4]}\n" for i in range(40)).encode()
    assert two_streams.records_in(window, b'"', 2) == 40
    assert two_streams.records_in(window + b"\n\r\n" + window, b'"', 2) == 80
    assert two_streams.records_in(b'1,"a\n\n\r\nb"\n' + window, b'"', 2) == 41


def test_a_blank_line_is_a_record_of_a_one_field_file() -> None:
    assert two_streams.records_in(b"1\n\n2\n", b'"', 1) == 3
    assert two_streams.records_in(b"1,a\n\n\r\n2,b\n", b'"', 2) == 2
    assert two_streams.records_in(b'1,"a\n\nb"\n', b'"', 2) == 1


def test_the_split_lands_after_the_quoted_multiline_record(loader: Loader, small_windows: None) -> None:
    """Record 9's three lines straddle the tenth line, where a count of lines would end batch 0. The split
    is where one stream's windows end it: the bytes before it are exactly records 1..R-1 for Python's
    csv module, and batch 1's bytes start with record R."""
    spec = write(loader, "in.csv", body())
    split = two_streams.find_split(pgstage.load_spec(spec), fingerprint(loader.root / "in.csv"), 10, 2)
    assert isinstance(split, two_streams.Split) and split.batch_rows == 10
    data = (loader.root / "in.csv").read_bytes()
    before = list(csv.reader(io.StringIO(data[len(HEADER):split.byte_offset].decode(), newline="")))
    assert [int(row[0]) for row in before] == list(range(1, split.record))
    assert data[split.byte_offset:].decode().startswith(f"{split.record},")
    ten_lines = len(HEADER) + sum(len(line) + 1 for line in body().split("\n")[:10])
    nine_records = len(HEADER) + len(body(8).encode())
    assert nine_records < ten_lines < nine_records + len(record(9, SPECIAL[9][0]).encode())   # inside record 9
    assert split.record > 10



@pytest.mark.parametrize(("batch_rows", "counted"), [(40, False), (38, True), (36, True), (30, True)])
def test_a_file_within_one_window_and_fewer_lines_than_a_batch_is_one_batch_uncounted(
        loader: Loader, monkeypatch: pytest.MonkeyPatch, batch_rows: int, counted: bool) -> None:
    """35 records on 37 lines (record 9 spans three), in one 4 MB window. With fewer line ends than a
    batch has records (+1, for a last record without one) the file is one batch without the quote
    rule's count; from 38 records a batch down, the records are counted, and at 30 there is a split."""
    calls: list[int] = []
    real = two_streams.records_in

    def records_in(*a: Any) -> int:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr(two_streams, "records_in", records_in)
    spec = write(loader, "in.csv", body(), batch_rows=batch_rows)
    split = two_streams.find_split(pgstage.load_spec(spec), fingerprint(loader.root / "in.csv"), batch_rows, 2)
    assert body().count("\n") == 37
    if batch_rows > 35:
        assert split == "one batch"
    else:
        assert isinstance(split, two_streams.Split) and (split.batch_rows, split.record) == (30, 31)
    assert bool(calls) == counted


# --- whole runs ---------------------------------------------------------------------------------------

def test_two_streams_load_exactly_what_one_stream_loads(loader: Loader, sql: Any, small_windows: None,
                                                       events: list[tuple[str, dict[str, Any]]]) -> None:
    """The same records gzip-compressed (one stream) and plain (two streams): the same batches, records,
    rejects and rows, all as the records were written."""
    write(loader, "in.csv.gz", body(), compress=True)
    report = loader.run()
    assert streams(events) == [("one stream", "compressed")]
    one_stream = ledger(sql, report.run_id)

    sql("DROP SCHEMA app CASCADE; DROP SCHEMA pgstage CASCADE")
    events.clear()
    spec = write(loader, "in.csv", body())
    split = two_streams.find_split(pgstage.load_spec(spec), fingerprint(loader.root / "in.csv"), 10, 2)
    assert isinstance(split, two_streams.Split)
    report = loader.run()
    assert streams(events) == [("two streams", split.record)]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (35, 2, 33)
    assert target(sql) == expected_rows()
    assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects ORDER BY record") == [
        (4, "min"), (13, "min")]
    two = ledger(sql, report.run_id)
    assert two == one_stream
    assert two[0][2:5] == (split.byte_offset, 1, split.record - 1) and two[1][1] == split.byte_offset
    assert [b[1] for b in two[1:]] == [b[2] for b in two[:-1]]          # contiguous bytes
    assert [b[3] for b in two[1:]] == [b[4] + 1 for b in two[:-1]]      # and record numbers
    assert (two[0][1], two[-1][2], two[-1][4]) == (len(HEADER), len(HEADER) + len(body().encode()), 35)
    staged = {fields["batch"]: fields["read"] for name, fields in events if name == "batch staged"}
    assert staged == {b[0]: b[4] - b[3] + 1 for b in two}
    no_run_tables(sql)


def test_a_file_of_one_batch_stages_on_one_stream(loader: Loader, sql: Any, small_windows: None,
                                                  events: list[tuple[str, dict[str, Any]]]) -> None:
    write(loader, "in.csv", body(), batch_rows=100)
    report = loader.run()
    assert streams(events) == [("one stream", "one batch")]
    assert ledger(sql, report.run_id) == [(0, len(HEADER), len(HEADER) + len(body().encode()), 1, 35, "merged")]
    assert target(sql) == expected_rows()


def test_a_file_of_exactly_one_full_batch(loader: Loader, sql: Any, small_windows: None,
                                          events: list[tuple[str, dict[str, Any]]]) -> None:
    """Ten records and batch_rows = 10: batch 0 ends at the end of the file, there is no batch 1."""
    write(loader, "in.csv", body(10), batch_rows=10)
    report = loader.run()
    assert streams(events) == [("one stream", "one batch")]
    assert [row[:5] for row in ledger(sql, report.run_id)] == [(0, len(HEADER), len(HEADER) + len(body(10).encode()),
                                                                 1, 10)]
    assert target(sql) == expected_rows(10)


def test_a_mispredicted_boundary_restages_batch_1_after_batch_0(loader: Loader, sql: Any,
                                                                 events: list[tuple[str, dict[str, Any]]]) -> None:
    """A one-field file: a blank line is an empty value for COPY (and the prediction), but in a window
    COPY refuses for its bad UTF-8 the quarantine reads it as no record. Batch 0 then ends a line later
    than predicted; batch 1's table is dropped and batch 1 staged again from batch 0's real end."""
    loader.spec("""
        [pipeline]
        name = "ids"
        target = "app.ids"
        key = ["id"]

        [source]
        path = "ids.csv"

        [columns]
        id = { from = "id", type = "text" }

        [load]
        batch_rows = 10
        workers = 2
        max_reject_ratio = 0.5
    """)
    lines = [b"x\xff" if i == 3 else b"" if i == 5 else b"%d" % i for i in range(1, 36)]
    loader.write("ids.csv", b"id\n" + b"".join(line + b"\n" for line in lines))
    report = loader.run()
    [(name, why)] = streams(events)
    assert name == "one stream" and why == ("batch 0 ended at byte 27, record 10, not at byte 24, record 10 as"
                                            " predicted: batch 1 staged again after it")
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (34, 1, 33)
    assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects") == [(3, "parse")]
    # numbers follow the records: the blank line 5 takes none, so line n > 5 is record n - 1
    want = sorted(str(i) for i in range(1, 36) if i not in (3, 5))
    assert sorted(r[0] for r in sql("SELECT id FROM app.ids")) == want
    assert [row[:5] for row in ledger(sql, report.run_id)] == [
        (0, 3, 27, 1, 10), (1, 27, 57, 11, 20), (2, 57, 87, 21, 30), (3, 87, 99, 31, 34)]
    no_run_tables(sql)


def test_a_busy_pool_leaves_the_file_on_one_stream(loader: Loader, sql: Any, db_url: str, small_windows: None,
                                                    events: list[tuple[str, dict[str, Any]]]) -> None:
    """The pool's sessions are all taken when the file starts: batch 0 ends before batch 1's job
    could start, so the job is withdrawn and the file goes on as one stream."""
    spec_path = write(loader, "in.csv", body())
    spec = pgstage.load_spec(spec_path)
    release = threading.Event()
    stop = logs.listen(lambda event, fields: release.set() if event == "one stream" else None)
    try:
        with Workers(db_url, spec.load, "busy") as pool:
            held = [pool.submit(lambda session: release.wait(60)) for _ in range(spec.load.workers)]
            report = pgstage.run(spec, db=db_url, workers=pool)
            assert all(h.result() for h in held)
    finally:
        stop()
    assert_identity(report)
    assert streams(events) == [("one stream", "pool busy")]
    assert target(sql) == expected_rows()
    batches = ledger(sql, report.run_id)
    assert [b[3] for b in batches[1:]] == [b[4] + 1 for b in batches[:-1]] and batches[-1][4] == 35


def test_a_run_killed_after_batch_0_resumes_on_one_stream(loader: Loader, sql: Any, db_url: str,
                                                          events: list[tuple[str, dict[str, Any]]]) -> None:
    """Killed right after batch 0's merge committed (its batch 1 was staged on the second stream and
    validated): the re-run resumes at batch 1 from the checkpoint, on one stream, and the result is
    the records as written, each rejected record once under its number."""
    # 4 MB windows in the child: the quoted record comes early, so batch 0 still ends on its 10th record
    special = {5: SPECIAL[9], 4: SPECIAL[4], 13: SPECIAL[13]}
    spec = write(loader, "in.csv", body(special=special))
    env = {**os.environ, "PGSTAGE_FAULT": "merge.after:1"}
    child = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", db_url], env=env,
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert sql("SELECT batch_no, record_start, record_end FROM pgstage.batches WHERE status = 'merged'") == [(0, 1, 10)]
    report = loader.run()
    assert streams(events) == [("one stream", "resumed")]
    assert target(sql) == expected_rows(special=special)
    assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects ORDER BY record") == [
        (4, "min"), (13, "min")]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (35, 2, 33)
    assert [row[3:5] for row in ledger(sql, report.run_id)] == [(1, 10), (11, 20), (21, 30), (31, 35)]
    no_run_tables(sql)
