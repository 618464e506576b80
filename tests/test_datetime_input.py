"""Date/time input without digits: judged without PostgreSQL's parser, with the same outcome.

`transform._may_be_datetime` lets the validation pass refuse text that has no digit and no
special word before `pg_input_is_valid` would look each unknown word up as a time zone file.
These tests hold it to PostgreSQL's own judgement, and the rejects to PostgreSQL's words.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from pgstage.pipeline.transform import SPECIAL_DATETIME, SPECIAL_NUMBER, _may_be_datetime, _postgres_message, may_be_special
from tests.conftest import Loader

KINDS = ("date", "timestamp", "timestamptz", "time", "timetz")

SPEC = """
[pipeline]
name = "events"
target = "public.events"
key = ["id"]

[source]
path = "events.csv"

[columns]
id = { from = "id", type = "integer", required = true }
day = { from = "day", type = "date" }
at = { from = "at", type = "timestamptz" }
wall = { from = "wall", type = "timestamp", timezone = "Europe/Paris" }
clock = { from = "clock", type = "time" }

[load]
max_reject_ratio = 1.0
"""


def test_digitless_junk_is_rejected_in_postgresqls_words(loader: Loader, sql: Any) -> None:
    loader.spec(SPEC)
    loader.write("events.csv", "id,day,at,wall,clock\n"
                               "1,2024-03-01,2024-03-01 10:00+00,2024-03-01 10:00,10:00\n"
                               "2,N/A,2024-03-01 10:00+00,2024-03-01 10:00,10:00\n"
                               "3,2024-03-01,not a date,2024-03-01 10:00,10:00\n"
                               "4,2024-03-01,2024-03-01 10:00+00,TBD,10:00\n"
                               "5,2024-03-01,2024-03-01 10:00+00,2024-03-01 10:00,Europe/Nowhere\n"
                               "6,March 1 2024,Fri Mar 1 10:00:00 2024 UTC,2024-03-01 10:00,10:00\n"
                               "7,2024-03-01,Today,2024-03-01 10:00,allballs\n"
                               "8,j . ,julian .,2024-03-01 10:00,10:00\n"
                               "9,J2451187,2024-03-01 10:00+00,2024-03-01 10:00,10:00\n"
                               "10,2024-03-01,2024-03-01T10:00:00Z,2024-03-01T10:00:00,10:00:00Z\n"
                               "11,2024-03-01,TOMORROW,2024-03-01T10:00:00,10:00\n")
    report = loader.run()
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (11, 8, 3)
    rows = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    special = " is a special input value, not data (allow_special = true accepts it)"
    assert [(r, [(x["column"], x["rule"], x["message"]) for x in rs]) for r, rs in rows] == [
        (2, [("day", "type", 'invalid input syntax for type date: "N/A"')]),
        (3, [("at", "type", 'invalid input syntax for type timestamp with time zone: "not a date"')]),
        (4, [("wall", "type", 'invalid input syntax for type timestamp: "TBD"')]),
        (5, [("clock", "type", 'time zone "europe/nowhere" not recognized')]),
        (7, [("at", "special", "'Today'" + special), ("clock", "special", "'allballs'" + special)]),
        # PostgreSQL reads a Julian day (`j . ` without digits is day 0, 4714-11-24 BC): not data either
        (8, [("day", "special", "'j . '" + special), ("at", "special", "'julian .'" + special)]),
        (9, [("day", "special", "'J2451187'" + special)]),
        (11, [("at", "special", "'TOMORROW'" + special)]),
    ]
    assert sql("SELECT id, day::text, at::text, wall::text, clock::text FROM public.events ORDER BY id") == [
        (1, "2024-03-01", "2024-03-01 10:00:00+00", "2024-03-01 09:00:00", "10:00:00"),   # 10:00 in Paris is 09:00 UTC
        (6, "2024-03-01", "2024-03-01 10:00:00+00", "2024-03-01 09:00:00", "10:00:00"),
        (10, "2024-03-01", "2024-03-01 10:00:00+00", "2024-03-01 09:00:00", "10:00:00")]   # ISO 8601 with T and Z


# Words PostgreSQL's date/time parser knows, and separators: digit-free text is built from them.
_WORDS = ["allballs", "am", "pm", "at", "bc", "ad", "d", "epoch", "h", "infinity", "-infinity", "+infinity",
          "isodow", "j", "julian", "m", "mm", "now", "on", "s", "t", "today", "tomorrow", "y", "yesterday",
          "jan", "january", "sept", "monday", "mon", "z", "zulu", "utc", "gmt", "est", "pst", "cet",
          "america/new_york", "europe/paris", "posixrules", "noon", "current", "invalid", "n/a", "tbd"]
_SEPARATORS = [" ", "  ", "-", "/", ".", ",", ":", "+", "T", ""]
digit_free = st.lists(st.tuples(st.sampled_from(_WORDS) | st.text("abcxyzTZ-/.:+ ", max_size=4),
                                st.sampled_from(_SEPARATORS)), min_size=1, max_size=4).map(
    lambda parts: "".join(w.upper() if len(w) % 3 == 0 else w for p in parts for w in p))


def _refused_but_valid(conn: psycopg.Connection[Any], values: list[str]) -> list[tuple[str, str]]:
    """(kind, value) pairs the shortcut calls impossible that PostgreSQL accepts: must be none."""
    query = pgsql.SQL("SELECT k, v FROM unnest(%s::text[]) v, unnest(%s::text[]) k"
                      " WHERE NOT {} AND pg_input_is_valid(v, k)").format(_may_be_datetime(pgsql.Identifier("v")))
    return conn.execute(query, (values, list(KINDS))).fetchall()


def _other_words(conn: psycopg.Connection[Any], values: list[str]) -> list[tuple[str, str, str, str]]:
    """(type, value, our message, PostgreSQL's) where the messages of invalid values differ: must be none."""
    differ = []
    for kind in ("date", "timestamp", "timestamp without time zone", "timestamp with time zone",
                 "timestamp(3) with time zone", "time", "timetz"):
        query = pgsql.SQL("SELECT %s, v, {}, (pg_input_error_info(v, %s)).message FROM unnest(%s::text[]) v"
                          " WHERE NOT pg_input_is_valid(v, %s)").format(_postgres_message(pgsql.Identifier("v"), kind))
        differ += [r for r in conn.execute(query, (kind, kind, values, kind)).fetchall() if r[2] != r[3]]
    return differ


@pytest.fixture(scope="module")
def conn(server_url: str) -> Any:
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute("SET TIME ZONE 'UTC'")
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(digit_free, min_size=1, max_size=50))
@example(values=["j . "])   # Julian day 0 (4714-11-24 BC) to PostgreSQL: found by this test in CI
def test_the_shortcut_never_refuses_what_postgresql_accepts(conn: Any, values: list[str]) -> None:
    assert _refused_but_valid(conn, values) == []
    assert _other_words(conn, values + ["2024-02-30", "24:61", "Jan 32 2024", "2024-01-01 +99"]) == []


def test_every_zone_name_and_abbreviation_with_every_keyword(conn: Any) -> None:
    zones = [z for (z,) in conn.execute("SELECT abbrev FROM pg_timezone_abbrevs UNION"
                                        " SELECT name FROM pg_timezone_names WHERE name !~ '[0-9]'")]
    values = zones + [f"{w} {z}" for w in _WORDS for z in zones[::7]] + [f"{a} {b}" for a in _WORDS for b in _WORDS]
    assert len(values) > 5_000
    assert _refused_but_valid(conn, values) == []
    assert _other_words(conn, values) == []
    # And the shortcut does its job: junk is refused without the parser, the special words are not.
    flags = conn.execute(pgsql.SQL("SELECT v, {} FROM unnest(%s::text[]) v").format(
        _may_be_datetime(pgsql.Identifier("v"))), (["N/A", "not a date", "Today", "2024-01-01", "Jan 5 2024", "j . ",
                                                    "Jun 5"],)).fetchall()
    assert flags == [("N/A", False), ("not a date", False), ("Today", True), ("2024-01-01", True), ("Jan 5 2024", True),
                     ("j . ", True), ("Jun 5", True)]


# Any text PostgreSQL can hold (no NUL), many letters of both cases, some non-ASCII ones.
any_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=24) | digit_free


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(any_text, min_size=1, max_size=50))
@example(values=["Today", "2024-01-15T10:22:01Z", "tomorrow", "T", "z"])
def test_the_cheap_test_passes_every_special_word(conn: Any, values: list[str]) -> None:
    """The special-word rule looks only at values the cheap test passes: it must miss none, in any case."""
    values += ["NOW", "now", "Infinity", "-INFINITY", "2024-01-01 allballs", "EPOCH", " NaN ", "inf", "j", "J2451187",
               "2024-01-01T00:00:00Z today", "TZ julian", "Ωmega"]
    values += [v.upper() for v in values] + [v.swapcase() for v in values]
    for pattern in (SPECIAL_DATETIME, SPECIAL_NUMBER):
        query = pgsql.SQL("SELECT v FROM unnest(%s::text[]) v WHERE v ~* %s AND NOT {}").format(
            may_be_special(pgsql.Identifier("v")))
        assert conn.execute(query, (values, pattern)).fetchall() == []
    # And it does its job: ISO 8601 with T and Z, offsets, slashes and plain numbers skip the word pattern.
    shapes = ["2024-01-15T10:22:01Z", "2024-01-15t10:22:01.123456z", "2024-01-15 10:22:01+00", "15/01/2024 10:22",
              "2024-01-15T10:22:01-05:30", "1,234.50", "12:30", "Today", "Jan 5 2024", "NaN", "Ωmega"]
    passed = conn.execute(pgsql.SQL("SELECT v FROM unnest(%s::text[]) v WHERE {}").format(
        may_be_special(pgsql.Identifier("v"))), (shapes,)).fetchall()
    assert passed == [("Today",), ("Jan 5 2024",), ("NaN",), ("Ωmega",)]
