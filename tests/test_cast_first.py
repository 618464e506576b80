"""Cast first: a batch is cast without `pg_input_is_valid`, learning its bad values from the casts' errors.

The outcome must not depend on which pass ran: the same rows land, the same rejects with the
same reasons. Which pass ran is read from the statements PostgreSQL was sent (the SQL trace).
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from pgstage import db
from pgstage.pipeline import validate
from tests.conftest import Loader, assert_identity

SPEC = """
[pipeline]
name = "items"
target = "public.items"
key = ["id"]

[source]
path = "items.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
price = {{ from = "price", type = "numeric(8,2)" }}
day = {{ from = "day", type = "date" }}
seen = {{ from = "seen", type = "timestamptz" }}
ok = {{ from = "ok", type = "boolean" }}
code = {{ from = "code", type = "varchar(3)" }}

[load]
batch_rows = {batch_rows}
workers = {workers}
max_reject_ratio = 1.0
"""
HEADER = "id,price,day,seen,ok,code\n"


def line(i: int) -> str:
    return f"{i},{i}.25,2024-01-{i % 28 + 1:02d},2024-01-{i % 28 + 1:02d} 10:00:00+00,{'tf'[i % 2]},c{i % 10}\n"


def expected(i: int) -> tuple[Any, ...]:
    return (i, f"{i}.25", f"2024-01-{i % 28 + 1:02d}", f"2024-01-{i % 28 + 1:02d} 10:00:00+00", i % 2 == 0, f"c{i % 10}")


# A candidate column (date/time, number, boolean) checked with pg_input_is_valid before its
# cast; the full pass checks all four, a cast-first pass only those it learnt to check.
_VALIDITY = re.compile(r'pg_input_is_valid\("_n_(price|day|seen|ok)"')
_CHECK = re.compile(r'^(CREATE UNLOGGED TABLE "pgstage"\."_chk_\d+_\d+_\d+".*?);\n-- [^\n]*?: (failed)?', re.M | re.S)


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> Callable[[], list[str]]:
    """The validation passes PostgreSQL was sent, in order: 'cast first', 'cast first failed' or 'full'.

    Read from the statements themselves, as PGSTAGE_TRACE_SQL prints them: a checked table
    created with every candidate column validated first is the full pass; one that failed, a
    cast that refused a value.
    """
    monkeypatch.setattr(db, "TRACE", True)

    def read() -> list[str]:
        found = []
        for statement, failed in _CHECK.findall(capfd.readouterr().err):
            kind = "full" if len(set(_VALIDITY.findall(statement))) == 4 else "cast first"
            found.append(kind + (" failed" if failed else ""))
        return found

    return read


def table(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT id, price::text, day::text, seen::text, ok, code FROM public.items ORDER BY id")


def test_a_clean_file_is_cast_first_in_every_batch(loader: Loader, sql: Any, passes: Callable[[], list[str]]) -> None:
    loader.spec(SPEC.format(batch_rows=10, workers=2))
    loader.write("items.csv", HEADER + "".join(line(i) for i in range(1, 31)) + "31,,,,,\n")
    report = loader.run()
    assert passes() == ["cast first"] * 4
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (31, 0, 31)
    assert table(sql) == [expected(i) for i in range(1, 31)] + [(31, None, None, None, None, None)]


def test_a_bad_value_the_error_names_is_refused_uncast_and_an_overflow_has_its_column_checked(
        loader: Loader, sql: Any, passes: Callable[[], list[str]]) -> None:
    loader.spec(SPEC.format(batch_rows=10, workers=1))   # one worker: the batches validate in order
    rows = [line(i) for i in range(1, 31)]
    rows[9] = "10,9.99,2024-02-30,2024-01-01 10:00:00+00,t,abc\n"       # record 10: no 30 February
    rows[14] = "15,1234567.891,2024-01-01,2024-01-01 10:00:00+00,t,abcd\n"  # record 15: too wide twice
    loader.write("items.csv", HEADER + "".join(rows))
    report = loader.run()
    # Batch 1 learns that day '2024-02-30' is bad; batch 2's overflow names no value: price is checked.
    assert passes() == ["cast first failed", "cast first", "cast first failed", "cast first", "cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (30, 2, 28)
    rejects = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [(r, [(x["column"], x["rule"], x["message"]) for x in rs]) for r, rs in rejects] == [
        (10, [("day", "type", 'date/time field value out of range: "2024-02-30"')]),
        (15, [("price", "type", "numeric field overflow"),
              ("code", "type", 'value too long for type character varying(3)')]),
    ]
    assert table(sql) == [expected(i) for i in range(1, 31) if i not in (10, 15)]


def test_repeated_bad_values_are_learnt_once_for_the_run(loader: Loader, sql: Any, passes: Callable[[], list[str]]) -> None:
    loader.spec(SPEC.format(batch_rows=10, workers=1))
    rows = [line(i) for i in range(1, 31)]
    bad_day = "{0},1.00,2024-02-30,2024-01-01 10:00:00+00,t,x\n"
    bad_seen = "{0},1.00,2024-01-01,2024-13-01 10:00:00+00,t,x\n"
    junk = "{0},1.00,N/A,not a time,t,x\n"                               # refused by the junk test, uncast
    for i, template in ((3, bad_day), (13, bad_day), (23, bad_day), (15, bad_seen), (25, bad_seen), (27, junk)):
        rows[i - 1] = template.format(i)
    loader.write("items.csv", HEADER + "".join(rows))
    report = loader.run()
    assert passes() == ["cast first failed", "cast first", "cast first failed", "cast first", "cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (30, 6, 24)
    day = ("day", "type", 'date/time field value out of range: "2024-02-30"')
    seen = ("seen", "type", 'date/time field value out of range: "2024-13-01 10:00:00+00"')
    rejects = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [(r, [(x["column"], x["rule"], x["message"]) for x in rs]) for r, rs in rejects] == [
        (3, [day]), (13, [day]), (15, [seen]), (23, [day]), (25, [seen]),
        (27, [("day", "type", 'invalid input syntax for type date: "N/A"'),
              ("seen", "type", 'invalid input syntax for type timestamp with time zone: "not a time"')]),
    ]
    assert table(sql) == [expected(i) for i in range(1, 31) if i not in (3, 13, 15, 23, 25, 27)]


def test_a_value_valid_for_another_column_is_not_refused_there(loader: Loader, sql: Any, passes: Callable[[], list[str]]) -> None:
    # '1e5' fails the boolean cast; the numeric column, searched first, holds it too, where it is valid.
    loader.spec(SPEC.format(batch_rows=1000, workers=1))
    loader.write("items.csv", HEADER + "1,1e5,2024-01-01,2024-01-01 10:00:00+00,t,x\n"
                 + "2,1.00,2024-01-01,2024-01-01 10:00:00+00,1e5,x\n" + "3,1e5,2024-01-01,2024-01-01 10:00:00+00,f,x\n")
    report = loader.run()
    assert passes() == ["cast first failed", "cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (3, 1, 2)
    assert sql("SELECT record, reasons->0->>'column', reasons->0->>'message' FROM pgstage.rejects") == [
        (2, "ok", 'invalid input syntax for type boolean: "1e5"')]
    assert sql("SELECT id, price::text FROM public.items ORDER BY id") == [(1, "100000.00"), (3, "100000.00")]


def test_a_message_that_quotes_part_of_a_value_has_its_column_checked(loader: Loader, sql: Any,
                                                                       passes: Callable[[], list[str]]) -> None:
    # PostgreSQL quotes only the zone, folded to lower case: the column holding it is checked from then on.
    loader.spec(SPEC.format(batch_rows=2, workers=1))
    loader.write("items.csv", HEADER + line(1) + "2,1.00,2024-01-01,2024-01-05 10:00 Mars/Base,t,x\n"
                 + line(3) + "4,1.00,2024-02-30,2024-01-05 10:00 Venus/Base,t,x\n")
    report = loader.run()
    assert passes() == ["cast first failed", "cast first", "cast first failed", "cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (4, 2, 2)
    rejects = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [(r, [(x["column"], x["message"]) for x in rs]) for r, rs in rejects] == [
        (2, [("seen", 'time zone "mars/base" not recognized')]),
        (4, [("day", 'date/time field value out of range: "2024-02-30"'),
             ("seen", 'time zone "venus/base" not recognized')]),
    ]
    assert table(sql) == [expected(1), expected(3)]


def test_a_failure_that_names_nothing_of_the_batch_ends_cast_first_for_the_run(loader: Loader, sql: Any,
                                                                               passes: Callable[[], list[str]]) -> None:
    # A domain's message quotes its constraint's name, which no record holds.
    sql("CREATE DOMAIN public.posint AS integer CHECK (VALUE > 0)")
    loader.spec(SPEC.format(batch_rows=2, workers=1).replace('type = "bigint"', 'type = "posint"'))
    loader.write("items.csv", HEADER + line(1) + line(2) + "-3,1.00,2024-01-01,2024-01-01 10:00:00+00,t,x\n" + line(4)
                 + line(5))
    report = loader.run()
    assert passes() == ["cast first", "cast first failed", "full", "full"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (5, 1, 4)
    assert sql("SELECT record, reasons->0->>'column', reasons->0->>'message' FROM pgstage.rejects") == [
        (3, "id", 'value for domain posint violates check constraint "posint_check"')]
    assert table(sql) == [expected(i) for i in (1, 2, 4, 5)]


def test_a_batch_with_ragged_records_is_still_cast_first(loader: Loader, sql: Any, passes: Callable[[], list[str]]) -> None:
    loader.spec(SPEC.format(batch_rows=1000, workers=2))
    loader.write("items.csv", HEADER + line(1) + "2,1.00\n" + line(3))
    report = loader.run()
    assert passes() == ["cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (3, 1, 2)
    assert table(sql) == [expected(1), expected(3)]


def test_a_text_type_is_still_checked_when_the_batch_is_cast_first(loader: Loader, sql: Any,
                                                                    passes: Callable[[], list[str]]) -> None:
    # An explicit cast to varchar(3) would truncate 'abcd' without a word: the input check stays.
    loader.spec(SPEC.format(batch_rows=1000, workers=2))
    loader.write("items.csv", HEADER + line(1) + "2,1.00,2024-01-01,2024-01-01 10:00:00+00,t,abcd\n")
    report = loader.run()
    assert passes() == ["cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (2, 1, 1)
    assert sql("SELECT record, reasons->0->>'message' FROM pgstage.rejects") == [
        (2, "value too long for type character varying(3)")]
    assert table(sql) == [expected(1)]


_examples = itertools.count()
# Good and bad text for each column; some bad values are valid for another column's type ('1e5'),
# hold a double quote (PostgreSQL quotes them in its message), or fail with a message that names
# no value of the batch (an overflow, an unknown time zone).
POOLS = {
    "id": ["{i}", "{i}", "{i}", "99999999999999999999", "1e5", '1"2', ""],
    "price": ["1.25", "7", "1e5", "abc", "1234567.891", '4"5', ""],
    "day": ["2024-01-05", "2024-01-05", "2024-02-30", "N/A", '2024-01-"01', "0000-00-00", ""],
    "seen": ["2024-01-05 10:00:00+00", "2024-01-05 10:00:00+00", "2024-13-01 10:00:00+00", "not a time",
             "2024-01-05 10:00 Mars/Base", "today", ""],
    "ok": ["t", "f", "yes", "maybe", "1e5", ""],
    "code": ["c1", "c1", "abcd", ""],
}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.fixed_dictionaries({c: st.sampled_from(v) for c, v in POOLS.items()}), min_size=1, max_size=30),
       batch_rows=st.sampled_from([3, 7, 1000]), workers=st.sampled_from([1, 2]))
def test_cast_first_lands_and_rejects_exactly_what_the_full_pass_does(
        tmp_path: Path, db_url: str, sql: Any, monkeypatch: pytest.MonkeyPatch,
        rows: list[dict[str, str]], batch_rows: int, workers: int) -> None:
    n = next(_examples)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(POOLS)
    writer.writerows([v.format(i=i) for v in r.values()] for i, r in enumerate(rows, 1))
    results = []
    for mode in ("cast", "full"):
        folder = tmp_path / f"ex{n}{mode}"
        folder.mkdir()
        (folder / "items.csv").write_text(out.getvalue(), encoding="utf-8", newline="")
        spec = SPEC.format(batch_rows=batch_rows, workers=workers).replace('"items"', f'"items{n}{mode}"').replace(
            "public.items", f"public.items{n}{mode}")
        (folder / "spec.toml").write_text(spec, encoding="utf-8")
        with monkeypatch.context() as patch:
            if mode == "full":
                patch.setattr(validate, "candidates", lambda spec, types: [])
            report = pgstage.run(folder / "spec.toml", db=db_url)
        assert_identity(report)
        target = f"public.items{n}{mode}"
        landed = sql(f"SELECT id, price::text, day::text, seen::text, ok, code FROM {target} ORDER BY id") \
            if report.counts.inserted else []
        rejects = sql("SELECT j.record, j.reasons FROM pgstage.rejects j JOIN pgstage.runs r USING (run_id)"
                      " WHERE r.pipeline = %s ORDER BY j.record", (f"items{n}{mode}",))
        results.append((report.counts.read, report.counts.rejected, report.counts.inserted, landed, rejects))
    assert results[0] == results[1]


def test_the_cast_guard_renders_and_refuses_only_junk_and_the_refused_values(sql: Any) -> None:
    from psycopg import sql as pgsql

    from pgstage.pipeline import transform
    from pgstage.spec import ColumnSpec

    column = ColumnSpec.model_validate({"from": "seen", "type": "timestamptz"})
    kind = transform.ColumnType("timestamp with time zone", "D")
    guard = transform.cast_guard(pgsql.Identifier("n"), column, kind, ("ba'z", "2024-02-30", 'a,"b}'))
    rendered = guard.as_string(None)
    assert rendered.startswith('("n" IS NULL OR ((ascii("n") BETWEEN 48 AND 57')
    assert rendered.endswith(""""n" <> ALL( E'{ba''z,2024-02-30,"a,\\\\"b}"}'::text[])))""")
    values = [None, "2024-01-01 10:00:00+00", "N/A", "ba'z", "2024-02-30", "2024-13-01", "today", 'a,"b}', "a,"]
    got = sql(pgsql.SQL("SELECT n, {} FROM unnest(%s::text[]) WITH ORDINALITY AS v(n, i) ORDER BY i").format(guard)
              .as_string(None), (values,))
    # Junk and the refused values are refused uncast; an unseen bad value is left to the cast.
    assert got == [(None, True), ("2024-01-01 10:00:00+00", True), ("N/A", False), ("ba'z", False),
                   ("2024-02-30", False), ("2024-13-01", True), ("today", True), ('a,"b}', False), ("a,", False)]
    plain = transform.cast_guard(pgsql.Identifier("n"), ColumnSpec.model_validate({"from": "id", "type": "bigint"}),
                                 transform.ColumnType("bigint", "N"))
    assert plain.as_string(None) == "true"
