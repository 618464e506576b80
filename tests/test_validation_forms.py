"""Cheaper forms of the validation pass's expressions give exactly the answers of the forms they replace.

The special-word rule's shared cheap test: `validate.build_check` tests the joined text of every
column with a special-word rule once (`transform.may_be_special_any`) before each column's own
tests. The same rows land (with the same `_row_hash`), the same records are rejected with the
same reasons as with each column tested alone, and the special reasons are exactly those a bare
SQL oracle gives (valid input for the type that matches the rule's pattern).

The trim: `transform.trimmed` calls `btrim` only for a staged value with a space at either end;
its result equals `btrim`'s for any text, and a loaded file's trimmed values equal Python's.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

import pgstage
from pgstage.pipeline import transform, validate
from tests.conftest import assert_identity

SPEC = """
[pipeline]
name = "{name}"
target = "public.{name}"
key = ["id"]

[source]
path = "{name}.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
created = {{ from = "created", type = "timestamptz" }}
updated = {{ from = "updated", type = "timestamp" }}
day = {{ from = "day", type = "date" }}
at = {{ from = "at", type = "time" }}
amount = {{ from = "amount", type = "numeric" }}
free = {{ from = "free", type = "date", allow_special = true }}
note = {{ from = "note", type = "text" }}

[load]
max_reject_ratio = 1.0
"""
FIELDS = ["id", "created", "updated", "day", "at", "amount", "free", "note"]
# The columns with a special-word rule, their types and patterns (`free` allows them, `note` is text).
RULED = {"created": ("timestamp with time zone", transform.SPECIAL_DATETIME),
         "updated": ("timestamp without time zone", transform.SPECIAL_DATETIME),
         "day": ("date", transform.SPECIAL_DATETIME), "at": ("time without time zone", transform.SPECIAL_DATETIME),
         "amount": ("numeric", transform.SPECIAL_NUMBER)}

# Pieces that join into hostile values: special words in every case and inside other words, Julian days,
# ISO 8601's T and Z, zones, quotes, whitespace, non-ASCII letters, and the shapes of real dates and numbers.
PIECES = ["2024-01-15", "1999-12-31", " ", "10:22:01", "04:05:06.789", "+00", "-05:30", "T", "Z", "t", "z",
          "now", "NOW", "Now", "today", "TODAY", "yesterday", "Tomorrow", "infinity", "-infinity", "Infinity",
          "epoch", "EPOCH", "allballs", "AllBalls", "julian", "J2451187", "j", "J", "J .", "NaN", "nan", "inf",
          "-Inf", "1.5", "42", "'", '"', "Ω", "é", "ǅ", "\t", "Jan", "jun", "xnowx", "snow", "PST", "UTC",
          "-", ":", ",", "/", ".", ""]
hostile = (st.lists(st.sampled_from(PIECES), max_size=4).map("".join)
           | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r\n"), max_size=8))
# `free` takes special words as data: only those whose value does not depend on the day of the run.
free_values = st.sampled_from(["epoch", "infinity", "-infinity", "J2451187", "2024-01-15", "EPOCH", "", "nope"])
# Most values clean, as in real files, so that one hostile value is often a row's only one.
CLEAN = {"created": ["2024-01-15 10:22:01+00", "2024-01-15T10:22:01Z", ""], "updated": ["2024-01-15 10:22:01", ""],
         "day": ["2024-01-15", "15/01/2024"], "at": ["10:22:01"], "amount": ["1.5", "1,234.50", "-3"]}
records = st.lists(st.fixed_dictionaries({**{c: st.sampled_from(CLEAN[c]) | st.sampled_from(CLEAN[c]) | hostile
                                             for c in RULED}, "free": free_values, "note": hostile}),
                   min_size=1, max_size=25)
_examples = itertools.count()


def _csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(FIELDS)
    writer.writerows([str(i), *(r[f] for f in FIELDS[1:])] for i, r in enumerate(rows, 1))
    return out.getvalue()


def _load(tmp_path: Path, db_url: str, sql: Any, name: str, text: str) -> tuple[Any, ...]:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.csv").write_text(text, encoding="utf-8", newline="")
    (folder / "spec.toml").write_text(SPEC.format(name=name), encoding="utf-8")
    report = pgstage.run(folder / "spec.toml", db=db_url)
    assert_identity(report)
    landed = sql(f"SELECT id, created::text, updated::text, day::text, at::text, amount::text, free::text, note,"
                 f" _row_hash FROM public.{name} ORDER BY id") if report.counts.inserted else []
    rejects = sql("SELECT j.record, j.raw, j.reasons FROM pgstage.rejects j JOIN pgstage.runs r USING (run_id)"
                  " WHERE r.pipeline = %s ORDER BY j.record", (name,))
    return report.counts.read, report.counts.rejected, report.counts.inserted, landed, rejects


def _oracle(sql: Any, rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    """(record, column) of every special reason, by bare SQL: valid input for the type that matches the pattern."""
    expected = []
    for column, (type_name, pattern) in RULED.items():
        values = [r[column] for r in rows]
        found = sql("SELECT i::int FROM unnest(%s::text[]) WITH ORDINALITY u(v, i)"
                    " WHERE v <> '' AND pg_input_is_valid(v, %s) AND v ~* %s", (values, type_name, pattern))
        expected += [(i, column) for (i,) in found]
    return sorted(expected)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=records)
@example(rows=[{"created": "2024-01-15T10:22:01Z", "updated": "2024-01-15 10:22:01", "day": "2024-01-15",
                "at": "10:22:01", "amount": "1.5", "free": "epoch", "note": "now"},
               {"created": "2024-01-15 NOW", "updated": "J2451187", "day": "epoch", "at": "allballs",
                "amount": " NaN ", "free": "infinity", "note": "Ω"},
               {"created": "-infinity", "updated": "2024-01-15 allballs", "day": "j .", "at": "04:05:06 PST",
                "amount": "-Inf", "free": "J2451187", "note": ""},
               {"created": "2024-01-15 10:22:01+00", "updated": "tomorrow 10:00", "day": "Jan 15 2024",
                "at": "10:22:01", "amount": "42", "free": "", "note": "'\"\t"},
               {"created": "2024-01-15 10:22:01+00", "updated": "2024-01-15 10:22:01", "day": "J2451187",
                "at": "10:22:01", "amount": "1.5", "free": "", "note": "today"}])
def test_the_shared_test_rejects_and_lands_exactly_what_each_column_alone_does(
        tmp_path: Path, db_url: str, sql: Any, monkeypatch: pytest.MonkeyPatch, rows: list[dict[str, str]]) -> None:
    n = next(_examples)
    text = _csv(rows)
    shared = _load(tmp_path, db_url, sql, f"sw{n}shared", text)
    with monkeypatch.context() as patch:
        patch.setattr(validate, "SHARED_SPECIAL_TEST_MIN", 1_000)   # the previous form: each column tested alone
        alone = _load(tmp_path, db_url, sql, f"sw{n}alone", text)
    assert shared == alone
    special = sorted((record, reason["column"]) for record, _, reasons in shared[4]
                     for reason in reasons if reason["rule"] == "special")
    assert special == _oracle(sql, rows)
    for record, _, reasons in shared[4]:
        for reason in reasons:
            if reason["rule"] == "special":
                assert reason["message"] == (_quote_literal(rows[record - 1][reason["column"]])
                                             + " is a special input value, not data (allow_special = true accepts it)")


def _quote_literal(value: str) -> str:
    """PostgreSQL's quote_literal: quotes doubled, and with a backslash, an E string with backslashes doubled."""
    quoted = "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return ("E" + quoted) if "\\" in value else quoted


def test_the_shared_test_is_one_regex_call_over_the_joined_texts(sql: Any) -> None:
    """Rendered: NULLs add nothing, and the joined text passes exactly when one of the values does."""
    test = transform.may_be_special_any([pgsql.Identifier("a"), pgsql.Identifier("b")])
    assert test.as_string() == ("""(coalesce("a", '') || coalesce("b", '')) ~ '[^-0-9 :.,+/TZtz]'""")
    pairs = [("2024-01-15 10:22:01+00", "2024-01-15T10:22:01Z"), ("2024-01-15", None), (None, None),
             ("2024-01-15", "now"), ("Today", None), (None, "J2451187"), ("1,234.50", "-3"), ("", "Ω")]
    query = pgsql.SQL("SELECT {}, {} OR {} FROM (VALUES {}) v(a, b)").format(
        test, transform.may_be_special(pgsql.Identifier("a")), transform.may_be_special(pgsql.Identifier("b")),
        pgsql.SQL(", ").join(pgsql.SQL("({}::text, {}::text)").format(pgsql.Literal(a), pgsql.Literal(b))
                             for a, b in pairs))
    found = sql(query.as_string())
    assert found == [(False, False), (False, None), (False, None), (True, True), (True, True), (True, True),
                     (False, False), (True, True)]


# Text with spaces where trimming decides, and the characters near them that `btrim` keeps: tabs,
# no-break and ideographic spaces, quotes, non-ASCII letters.
spaced = st.text(st.sampled_from([" ", " ", "\t", "\u00a0", "\u3000", "a", "Ω", "é", "'", '"', ",", "%", "_", "\\"]),
                 max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(spaced | st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
                       min_size=1, max_size=40))
def test_trimmed_is_btrim(sql: Any, values: list[str]) -> None:
    query = pgsql.SQL("SELECT v, {}, btrim(v) FROM unnest(%s::text[]) u(v)").format(transform.trimmed(pgsql.Identifier("v")))
    assert sql(query.as_string(), (values,)) == [(v, v.strip(" "), v.strip(" ")) for v in values]


def test_trimmed_keeps_btrim_for_an_expression() -> None:
    """A JSON field would be extracted three times by the CASE: it is trimmed by `btrim` alone."""
    assert transform.trimmed(pgsql.SQL("(doc->>'a')")).as_string() == "btrim((doc->>'a'))"
    assert transform.trimmed(pgsql.Identifier("f2")).as_string() == (
        """CASE WHEN "f2" LIKE E' \\x25' OR "f2" LIKE E'\\x25 ' THEN btrim("f2") ELSE "f2" END""")


TRIM_SPEC = """
[pipeline]
name = "{name}"
target = "public.{name}"
key = ["id"]

[source]
path = "{name}.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
name = {{ from = "name", type = "text", normalize = ["trim"] }}
code = {{ from = "code", type = "varchar(3)", normalize = ["trim"], required = true }}

[load]
max_reject_ratio = 1.0
"""


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(spaced, spaced), min_size=1, max_size=25))
@example(rows=[(" a", "b "), ("a ", " c "), ("  ", "  x"), ("\u00a0a ", "ab\t "), ("", " abcd "), ("'%' ", "_ ")])
def test_a_loaded_file_is_trimmed_as_python_strips_spaces(tmp_path: Path, db_url: str, sql: Any,
                                                          rows: list[tuple[str, str]]) -> None:
    name = f"trim{next(_examples)}"
    folder = tmp_path / name
    folder.mkdir()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "name", "code"])
    writer.writerows([i, a, b] for i, (a, b) in enumerate(rows, 1))
    (folder / f"{name}.csv").write_text(out.getvalue(), encoding="utf-8", newline="")
    (folder / "spec.toml").write_text(TRIM_SPEC.format(name=name), encoding="utf-8")
    report = pgstage.run(folder / "spec.toml", db=db_url)
    assert_identity(report)
    # The oracle: Python strips U+0020 only, as btrim does; the empty string is NULL; a code is required,
    # and at most three characters.
    expected, rejected = [], []
    for i, (a, b) in enumerate(rows, 1):
        code = b.strip(" ") or None
        if code is None:
            rejected.append((i, "required", "missing value"))
        elif len(code) > 3:
            rejected.append((i, "type", "value too long for type character varying(3)"))
        else:
            expected.append((i, a.strip(" ") or None, code))
    landed = sql(f"SELECT id, name, code FROM public.{name} ORDER BY id") if report.counts.inserted else []
    assert landed == expected
    assert sql("SELECT j.record, j.reasons->0->>'rule', j.reasons->0->>'message' FROM pgstage.rejects j"
               " JOIN pgstage.runs r USING (run_id) WHERE r.pipeline = %s ORDER BY j.record", (name,)) == rejected
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (len(rows), len(rejected), len(expected))
