"""The screen of refused windows (pipeline/_screen.py) must stage exactly what isolating the whole
window stages: the same rows under the same record numbers, the same quarantined records with
the same reasons. Hypothesis writes the files (quotes, doubled quotes, embedded newlines,
CRLF, ragged and blank lines, stray quotes, NUL); both ways run against PostgreSQL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pgstage.pipeline import _screen, stage
from pgstage.pipeline import _quarantine
from pgstage.pipeline._quarantine import isolate
from pgstage.pipeline.extract import csv as csv_extract
from pgstage.pipeline.extract.files import fingerprint
from pgstage.pipeline.stage import StartPoint
from pgstage.spec import parse_spec

SPEC = """
[pipeline]
name = "screen"
target = "s.t"
key = ["a"]
strategy = "upsert"

[source]
path = "in.csv"

[columns]
a = { from = "a", type = "text" }
b = { from = "b", type = "text" }
c = { from = "c", type = "text" }
"""

plain = st.text(alphabet="xyz 9é", max_size=4)
quoted = st.text(alphabet='xy,\n"é', max_size=5).map(lambda v: '"' + v.replace('"', '""') + '"')
stray = st.sampled_from(['x"y', '"x', 'x"', '""x', "\x00", "a\rb"])
value = st.one_of(plain, plain, quoted, stray)
line = st.one_of(
    st.lists(value, min_size=3, max_size=3).map(",".join),       # well-formed (mostly)
    st.lists(value, min_size=1, max_size=5).map(",".join),       # ragged
    st.just(""),                                                  # blank
)


def _stage(conn: psycopg.Connection[Any], path: Path) -> tuple[list[tuple[Any, ...]], list[tuple[int, str]], int]:
    spec = parse_spec(SPEC, path.parent / "spec.toml")
    source = fingerprint(path)
    rows: list[tuple[Any, ...]] = []
    quarantined: list[tuple[int, str]] = []
    read = 0
    stage.drop(conn, "_stg_9_0_0")   # what a failed example left behind must not fail the next one
    for batch in stage.stage_batches(conn, spec, source, file_no=0, table_prefix="_stg_9_0", start=StartPoint(),
                                     batch_rows=1000):
        rows += conn.execute(sql.SQL("SELECT _rec, f1, f2, f3 FROM {} s ORDER BY _rec").format(batch.rows())).fetchall()
        quarantined += [(q.record, q.reason) for q in batch.quarantined]
        read += batch.read
        stage.drop(conn, batch.table)
    return rows, quarantined, read


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=30), crlf=st.booleans(), window=st.sampled_from([30, 200, 1 << 20]))
@example(lines=['x"y,,"x,,a\rb'], crlf=True, window=30)   # found by CI: COPY cut the record at the CR
def test_screen_stages_what_isolation_stages(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch,
                                             lines: list[str], crlf: bool, window: int) -> None:
    eol = "\r\n" if crlf else "\n"
    path = tmp_path / "in.csv"
    path.write_bytes(("a,b,c" + eol + eol.join(lines) + eol).encode("utf-8"))
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", window)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgstage")
        screened = _stage(conn, path)
        monkeypatch.setattr(stage, "screen", lambda *a, **k: None)
        isolated = _stage(conn, path)
    assert screened == isolated


def test_a_ragged_row_in_a_big_window_is_found_without_isolating_the_window(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The screen, not the csv module, handles the window: only the suspect is parsed in Python."""
    body = "".join(f"{i},v{i},w{i}\n" for i in range(5000))
    path = tmp_path / "in.csv"
    path.write_bytes(("a,b,c\n" + body + "5000,short\n" + body.replace(",v", ',"q').replace(",w", '",w')).encode())
    whole: list[int] = []
    judged: list[int] = []
    real_isolate = stage.isolate

    def isolate_window(window: bytes, **kwargs: Any) -> Any:
        whole.append(1)
        return real_isolate(window, **kwargs)

    def judge_suspect(raw: bytes, **kwargs: Any) -> Any:
        judged.append(len(raw))
        return real_isolate(raw, **kwargs)

    monkeypatch.setattr(stage, "isolate", isolate_window)
    monkeypatch.setattr(_screen, "isolate", judge_suspect)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgstage")
        rows, quarantined, read = _stage(conn, path)
    assert whole == [] and judged == [len("5000,short\n")]
    assert read == 10001 and len(rows) == 10000
    assert quarantined == [(5001, "expected 3 fields, found 2")]
    assert rows[5000] == (5002, "0", "q0", "w0")


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.integers(min_value=0, max_value=400), min_size=100, max_size=3000),
       picks=st.lists(st.integers(min_value=0), max_size=12), skew=st.sampled_from([0.1, 0.5, 1.0, 2.0, 5.0]))
def test_line_starts_finds_every_line_whatever_the_line_lengths(lengths: list[int], picks: list[int],
                                                                skew: float) -> None:
    # Irregular lines (empty ones, long ones) and a mean that is wrong on purpose: the jumps
    # ahead may land anywhere, the offsets must still be those of a plain split.
    window = b"".join(b"x" * n + b"\n" for n in lengths)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n + 1)
    wanted = sorted({p % len(lengths) for p in picks})
    mean = max(1, int(len(window) / len(lengths) * skew))
    assert _screen._line_starts(window, wanted, mean) == [starts[i] for i in wanted]


def test_a_record_copy_cuts_at_a_carriage_return_is_quarantined_with_the_reason(
        tmp_path: Path, db_url: str) -> None:
    """A quote inside an unquoted value and a bare CR: the csv module reads one record, COPY two.

    The csv module takes the second quote for the start of a quoted value that runs on to the
    end of the window; COPY ends the record at the line end (its quotes are paired), as the
    window cutter does. The record is set aside with a reason instead of stopping the load,
    and the line after it is a record of its own, loaded.
    """
    path = tmp_path / "in.csv"
    path.write_bytes(b'a,b,c\r\n1,p,q\r\nx"y,,"x,,a\rb\r\n3,r,s\r\n')
    spec = parse_spec(SPEC, tmp_path / "spec.toml")
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS pgstage")
        stage.drop(conn, "_stg_9_0_0")
        [batch] = stage.stage_batches(conn, spec, fingerprint(path), file_no=0, table_prefix="_stg_9_0",
                                      start=StartPoint(), batch_rows=1000)
        rows = conn.execute(sql.SQL("SELECT _rec, f1, f2, f3 FROM {} s ORDER BY _rec").format(batch.rows())).fetchall()
        stage.drop(conn, batch.table)
    assert (batch.read, rows) == (3, [(1, "1", "p", "q"), (3, "3", "r", "s")])
    [q] = batch.quarantined
    assert (q.record, q.reason) == (2, "COPY does not read this as one record: a quote inside an unquoted value starts"
                                       " a quoted part for PostgreSQL, and a carriage return outside quotes ends a line"
                                       " (quote the whole value)")
    assert q.raw == 'x"y,,"x,,a\rb'


def test_isolation_ends_a_record_where_copy_does_and_keeps_multiline_values() -> None:
    """Records end at a line end with paired quotes before it (COPY's rule), unless the csv module ends them sooner."""
    window = (b'1,"two\nlines",x\n'          # a quoted value over two lines: one record
              b'2,a"b,"c,d\n'               # paired quotes, the second opens a value for the csv module
              b'3,e,f\n'                    # ... which must not swallow this record
              b'4,g"h,i\n'                  # a stray quote: judged alone, as the csv module ends it here
              b'5,j,k\n')
    found = isolate(window, first_record=1, n_fields=3, encoding="utf-8", delimiter=",", quote='"')
    assert [n for n, _ in found.good] == [1, 2, 3, 5]
    assert found.good[0][1] == '1,"two\nlines",x\n' and found.good[2][1] == "3,e,f\n"
    assert [(q.record, q.raw) for q in found.bad] == [(4, '4,g"h,i')]


def test_isolation_stays_linear_when_every_record_opens_a_quote_the_csv_module_would_run_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each record's csv reading is bounded by COPY's record end, so no record rereads the rest of the window."""
    window = b"".join(b'%d,a"b,"c\n' % i for i in range(5000))
    read: list[int] = []
    real_reader = _quarantine.csv.reader

    def counting_reader(lines: Any, **kwargs: Any) -> Any:
        def counted() -> Any:
            for line in lines:
                read.append(1)
                yield line
        return real_reader(counted(), **kwargs)

    monkeypatch.setattr(_quarantine.csv, "reader", counting_reader)
    found = isolate(window, first_record=1, n_fields=3, encoding="utf-8", delimiter=",", quote='"')
    assert [n for n, _ in found.good] == list(range(1, 5001)) and not found.bad
    assert len(read) == 5000   # each line read once
