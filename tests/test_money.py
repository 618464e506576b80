"""Money amounts: judged as one pattern says, though most are judged by numeric's own text.

`transform.valid` accepts an amount without the regex engine when it is exactly the text
PostgreSQL prints for its numeric value; every other amount takes the pattern. These tests
hold the whole to an independent pattern, and the cents to Python's decimal arithmetic.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

from pgstage.pipeline.transform import ColumnType, cast, parsed, valid
from pgstage.spec import ColumnSpec
from tests.conftest import Loader

# What an amount may look like: optional sign, 1-3 digits and comma groups or up to 15 digits, 2 decimals.
MONEY = re.compile(r"^[+-]?([0-9]{1,3}(,[0-9]{3}){1,4}|[0-9]{1,15})(\.[0-9]{1,2})?$")

_sign = st.sampled_from(["", "", "-", "+", " ", "--"])
_digits = st.text("0123456789", min_size=0, max_size=19)
_groups = st.lists(st.text("0123456789", min_size=2, max_size=4), max_size=5).map(lambda g: "".join("," + x for x in g))
_decimals = st.sampled_from(["", "", ".", ".5", ".50", ".05", ".500", ".1234", "e2", "E-1", "_0", " "])
amount_like = (st.tuples(_sign, _digits, _groups, _decimals).map("".join)
               | st.sampled_from(["NaN", "nan", "Infinity", "-Infinity", "0x1A", "1_000", ".5", "5.", "-0", "00", "0.00"])
               | st.text("0123456789+-.,eE_ xNaIinfty", min_size=1, max_size=22))

COLUMN = ColumnSpec.model_validate({"from": "amount", "type": "money_cents"})
KIND = ColumnType("bigint", "N")


@pytest.fixture(scope="module")
def conn(server_url: str) -> Any:
    with psycopg.connect(server_url, autocommit=True) as c:
        yield c


def _judged(conn: psycopg.Connection[Any], values: list[str]) -> list[tuple[str, bool, int | None]]:
    """(value, valid, cents) as the validation pass computes them: p in one level, the rest above it."""
    n, p = pgsql.Identifier("n"), pgsql.Identifier("p")
    query = pgsql.SQL("SELECT n, ok, CASE WHEN ok THEN {} END FROM (SELECT n, p, {} AS ok FROM"
                      " (SELECT n, {} AS p FROM unnest(%s::text[]) n) a) b").format(
        cast(n, p, COLUMN, KIND), valid(n, p, COLUMN, KIND), parsed(n, COLUMN))
    return conn.execute(query, (values,)).fetchall()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(amount_like, min_size=1, max_size=40))
def test_amounts_are_judged_as_the_pattern_says_and_cast_to_exact_cents(conn: Any, values: list[str]) -> None:
    values = [v for v in values if v]   # the empty string is NULL by then: `required` judges it
    expected = [(v, bool(MONEY.match(v)), int(Decimal(v.replace(",", "")) * 100) if MONEY.match(v) else None)
                for v in values]
    assert _judged(conn, values) == expected


def test_the_shortcut_and_the_pattern_agree_at_the_edges(conn: Any) -> None:
    values = ["12.50", "+12.50", "012", "-0", "0", "-3", "1,234.56", "1,23", "12.345", "1e3", "NaN", "Infinity",
              "999999999999999.99", "1000000000000000", "-999999999999999", "+999999999999999.9", " 1", "1 "]
    assert _judged(conn, values) == [
        ("12.50", True, 1250), ("+12.50", True, 1250), ("012", True, 1200), ("-0", True, 0), ("0", True, 0),
        ("-3", True, -300), ("1,234.56", True, 123456), ("1,23", False, None), ("12.345", False, None),
        ("1e3", False, None), ("NaN", False, None), ("Infinity", False, None),
        ("999999999999999.99", True, 99999999999999999), ("1000000000000000", False, None),
        ("-999999999999999", True, -99999999999999900), ("+999999999999999.9", True, 99999999999999990),
        (" 1", False, None), ("1 ", False, None)]


SPEC = """
[pipeline]
name = "ledger"
target = "public.ledger"
key = ["id"]

[source]
path = "ledger.csv"

[columns]
id = { from = "id", type = "integer", required = true }
amount = { from = "amount", type = "money_cents", required = true }

[load]
max_reject_ratio = 1.0
"""


def test_a_load_keeps_the_cents_and_names_the_bad_amounts(loader: Loader, sql: Any) -> None:
    loader.spec(SPEC)
    loader.write("ledger.csv", "id,amount\n1,12.50\n2,+7\n3,\"1,234.05\"\n4,12.345\n5,1e3\n6,NaN\n7,-0.5\n")
    report = loader.run()
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (7, 3, 4)
    assert sql("SELECT id, amount FROM public.ledger ORDER BY id") == [(1, 1250), (2, 700), (3, 123405), (7, -50)]
    message = " is not an amount (digits, optional thousands separators, at most 2 decimals)"
    assert sql("SELECT record, reasons->0->>'rule', reasons->0->>'message' FROM pgstage.rejects ORDER BY record") == [
        (4, "type", "'12.345'" + message), (5, "type", "'1e3'" + message), (6, "type", "'NaN'" + message)]
