"""Cast first: a clean batch is cast without `pg_input_is_valid`, a dirty one validated in full.

The outcome must not depend on which pass ran: the same rows land, the same rejects with the
same reasons. Which pass ran is read from the labels of the statements the run executed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pgstage.pipeline import validate
from tests.conftest import Loader

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


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The validation passes the run executed, in order: 'cast first', 'cast first failed' or 'full'."""
    seen: list[str] = []
    real = validate.execute

    def spy(conn: Any, query: Any, params: Any = None, *, label: str) -> Any:
        kind = "cast first" if label.startswith("validate (cast first) ") else "full" if label.startswith("validate /") else None
        try:
            cursor = real(conn, query, params, label=label)
        except Exception:
            if kind:
                seen.append(kind + " failed")
            raise
        if kind:
            seen.append(kind)
        return cursor

    monkeypatch.setattr(validate, "execute", spy)
    yield seen


def table(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT id, price::text, day::text, seen::text, ok, code FROM public.items ORDER BY id")


def test_a_clean_file_is_cast_first_in_every_batch(loader: Loader, sql: Any, passes: list[str]) -> None:
    loader.spec(SPEC.format(batch_rows=10, workers=2))
    loader.write("items.csv", HEADER + "".join(line(i) for i in range(1, 31)) + "31,,,,,\n")
    report = loader.run()
    assert passes == ["cast first"] * 4
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (31, 0, 31)
    assert table(sql) == [expected(i) for i in range(1, 31)] + [(31, None, None, None, None, None)]


def test_a_late_bad_value_falls_back_and_later_batches_validate_in_full(loader: Loader, sql: Any,
                                                                        passes: list[str]) -> None:
    loader.spec(SPEC.format(batch_rows=10, workers=1))   # one worker: the batches validate in order
    rows = [line(i) for i in range(1, 31)]
    rows[9] = "10,9.99,2024-02-30,2024-01-01 10:00:00+00,t,abc\n"       # record 10: no 30 February
    rows[14] = "15,1234567.891,2024-01-01,2024-01-01 10:00:00+00,t,abcd\n"  # record 15: too wide twice
    loader.write("items.csv", HEADER + "".join(rows))
    report = loader.run()
    assert passes == ["cast first failed", "full", "full", "full"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (30, 2, 28)
    rejects = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [(r, [(x["column"], x["rule"], x["message"]) for x in rs]) for r, rs in rejects] == [
        (10, [("day", "type", 'date/time field value out of range: "2024-02-30"')]),
        (15, [("price", "type", "numeric field overflow"),
              ("code", "type", 'value too long for type character varying(3)')]),
    ]
    assert table(sql) == [expected(i) for i in range(1, 31) if i not in (10, 15)]


def test_a_batch_with_ragged_records_is_validated_in_full_at_once(loader: Loader, sql: Any,
                                                                   passes: list[str]) -> None:
    loader.spec(SPEC.format(batch_rows=1000, workers=2))
    loader.write("items.csv", HEADER + line(1) + "2,1.00\n" + line(3))
    report = loader.run()
    assert passes == ["full"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (3, 1, 2)
    assert table(sql) == [expected(1), expected(3)]


def test_a_text_type_is_still_checked_when_the_batch_is_cast_first(loader: Loader, sql: Any,
                                                                    passes: list[str]) -> None:
    # An explicit cast to varchar(3) would truncate 'abcd' without a word: the input check stays.
    loader.spec(SPEC.format(batch_rows=1000, workers=2))
    loader.write("items.csv", HEADER + line(1) + "2,1.00,2024-01-01,2024-01-01 10:00:00+00,t,abcd\n")
    report = loader.run()
    assert passes == ["cast first"]
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (2, 1, 1)
    assert sql("SELECT record, reasons->0->>'message' FROM pgstage.rejects") == [
        (2, "value too long for type character varying(3)")]
    assert table(sql) == [expected(1)]
