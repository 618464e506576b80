"""Wall-clock times at the ends of PostgreSQL's range: rejected with a reason, never a crashed run.

A `timezone` column reads its text as a `timestamp` and then places it in the zone
(`AT TIME ZONE`). The timestamp's range and timestamptz's are the same instants, so a wall
clock within a day of either end (4714-11-24 BC, 294276-12-31) is valid `timestamp` input
whose instant in a zone east (at the bottom) or west (at the top) of UTC does not exist:
the conversion raised 22008 (datetime_field_overflow) and failed the whole run.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from pgstage.pipeline.transform import ColumnType, typed
from pgstage.spec import ColumnSpec
from tests import specs
from tests.conftest import Loader

# str.format undoes the template's doubled braces (no placeholders here).
SPEC = specs.template(name="events", target="public.events", path="events.csv", strategy=None, load="max_reject_ratio = 1.0",
                      columns="""
id = { from = "id", type = "integer", required = true }
tokyo = { from = "tokyo", type = "timestamptz", timezone = "Asia/Tokyo" }
york = { from = "york", type = "timestamp", timezone = "America/New_York" }
shaped = { from = "shaped", type = "timestamptz", format = "YYYY-MM-DD HH24:MI BC", timezone = "Asia/Tokyo" }
""").format()

OK = "2024-03-01 10:00"
OUT = "is out of range for type timestamp with time zone as wall-clock time in"


def test_wall_clock_times_beyond_the_range_are_rejected_not_a_crash(loader: Loader, sql: Any) -> None:
    loader.spec(SPEC)
    loader.write("events.csv", "id,tokyo,york,shaped\n"
                               f"1,{OK},{OK},2024-03-01 10:00 AD\n"
                               f"2,4714-11-24 00:00:00 BC,{OK},2024-03-01 10:00 AD\n"      # 15:00 UTC the day before
                               f"3,{OK},294276-12-31 23:00:00,2024-03-01 10:00 AD\n"       # 04:00 UTC a year later
                               f"4,{OK},{OK},4714-11-24 08:00 BC\n"                         # 23:00 UTC the day before
                               f"5,4714-11-24 10:00:00 BC,4714-11-24 00:00:00 BC,4714-11-24 10:00 BC\n"  # in range (Tokyo: +09:18:59 then)
                               f"6,294276-12-31 23:59:59,294276-12-31 18:59:59,{OK} AD\n")  # in range
    report = loader.run()
    assert (report.status, report.counts.read, report.counts.rejected, report.counts.inserted) == ("succeeded", 6, 3, 3)
    assert report.rejects_by_rule == {"tokyo.type": 1, "york.type": 1, "shaped.type": 1}
    rows = sql("SELECT record, reasons FROM pgstage.rejects ORDER BY record")
    assert [(r, [(x["column"], x["rule"], x["message"]) for x in rs]) for r, rs in rows] == [
        (2, [("tokyo", "type", f"'4714-11-24 00:00:00 BC' {OUT} Asia/Tokyo")]),
        (3, [("york", "type", f"'294276-12-31 23:00:00' {OUT} America/New_York")]),
        (4, [("shaped", "type", f"'4714-11-24 08:00 BC' {OUT} Asia/Tokyo")]),
    ]
    assert sql("SELECT id, tokyo::text, york::text, shaped::text FROM public.events ORDER BY id") == [
        (1, "2024-03-01 01:00:00+00", "2024-03-01 15:00:00", "2024-03-01 01:00:00+00"),
        (5, "4714-11-24 00:41:01+00 BC", "4714-11-24 04:56:02 BC", "4714-11-24 00:41:01+00 BC"),
        (6, "294276-12-31 14:59:59+00", "294276-12-31 23:59:59", "2024-03-01 01:00:00+00")]


# --- the judgement and the cast agree for any wall clock and zone --------------------------------------

ZONES = ("UTC", "Asia/Tokyo", "Pacific/Kiritimati", "America/New_York", "Pacific/Pago_Pago", "Asia/Kathmandu")
LOW = ("4714-11-23", "4714-11-24", "4714-11-25")
HIGH = ("294276-12-30", "294276-12-31", "294277-01-01")


@pytest.fixture(scope="module")
def conn(server_url: str) -> Any:
    with psycopg.connect(server_url, autocommit=True) as c:
        c.execute("SET TIME ZONE 'UTC'")
        yield c


def _converts(conn: psycopg.Connection[Any], value: str, zone: str) -> bool:
    """PostgreSQL's own answer: does the wall clock exist as an instant in the zone?"""
    try:
        with conn.transaction():
            conn.execute("SELECT %s::timestamp AT TIME ZONE %s", (value, zone))
        return True
    except (psycopg.errors.DatetimeFieldOverflow, psycopg.errors.InvalidDatetimeFormat):
        return False


def _typed(conn: psycopg.Connection[Any], value: str, zone: str, type_name: str) -> Any:
    column = ColumnSpec.model_validate({"from": "v", "type": type_name, "timezone": zone})
    kind = ColumnType({"timestamptz": "timestamp with time zone", "timestamp": "timestamp without time zone"}[type_name],
                      "D")
    expr = typed(pgsql.Identifier("v"), column, kind, ())
    return conn.execute(pgsql.SQL("SELECT ({})::text FROM (SELECT %s::text AS v) s").format(expr), (value,)).fetchone()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day=st.sampled_from(LOW + HIGH), hour=st.integers(0, 23), minute=st.sampled_from([0, 1, 29, 59]),
       zone=st.sampled_from(ZONES), type_name=st.sampled_from(["timestamptz", "timestamp"]))
@example(day="4714-11-24", hour=0, minute=0, zone="Asia/Tokyo", type_name="timestamptz")
@example(day="294276-12-31", hour=23, minute=0, zone="America/New_York", type_name="timestamp")
def test_a_value_is_valid_exactly_when_its_instant_exists(conn: Any, day: str, hour: int, minute: int, zone: str,
                                                          type_name: str) -> None:
    value = f"{day} {hour:02}:{minute:02}:00" + (" BC" if day.startswith("4714") else "")
    [result] = _typed(conn, value, zone, type_name)           # never raises: NULL when not valid
    assert (result is not None) == _converts(conn, value, zone)
