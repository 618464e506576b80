"""What the sample's values are, as PostgreSQL reads them (for `pgstage init`): null markers,
types that last, trimming and zero dates.

Every question is an aggregate over the sample table (text columns f1..fN, `_rec`), asked of
`pg_input_is_valid` so that the draft agrees with the load on what is a date, a number or an
offset. Names only refine what the values allow: a column is money or a small code only if its
values fit too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.pipeline.transform import MONEY, OFFSET, SPECIAL_DATETIME, SPECIAL_NUMBER, ZERO_DATE

SAMPLE_TABLE = "pgstage_init_sample"
SAMPLE = sql.Identifier(SAMPLE_TABLE)

# What exports write for "no value" (R: NA; spreadsheets: N/A, #N/A; JSON and SQL dumps: null,
# NULL; Python: None, nan; statistics portals: -). A marker is written into the spec only when
# it stands in for a value of a typed column (see `adopted`), never because it might.
MARKERS = ("NA", "N/A", "n/a", "#N/A", "null", "NULL", "Null", "None", "nan", "-")

# Names that say "money" (money_cents needs the name AND values that fit). A price may be a
# stock's, quoted to a tenth of a cent: it is money only with a currency in its header or values
# only money_cents can read (thousands separators).
_MONEY_WORDS = frozenset(("amount", "amounts", "total", "totals", "subtotal", "cost", "costs", "fee", "fees", "tax",
                          "revenue", "balance", "payment", "refund", "refunded", "discount", "charge", "salary"))
_PRICE_WORDS = frozenset(("price", "prices", "sum", "value"))
_CURRENCY = re.compile(r"[$€£¥₹]|(^|[^a-z])(usd|eur|gbp|jpy|chf|cad|aud|cents?)([^a-z]|$)", re.IGNORECASE)
# Integer columns whose name says they hold a small code or a calendar part: `integer`, not `bigint`.
_SMALL_CODE_WORDS = frozenset(("code", "status", "type", "kind", "level", "class", "category", "grade", "rank", "year",
                               "month", "day", "week", "quarter", "hour", "minute", "weekday"))
DATE_TYPES = ("date", "timestamp", "timestamptz")

PARAMS: dict[str, Any] = {
    "money": MONEY, "offset": OFFSET, "special_dt": SPECIAL_DATETIME, "special_num": SPECIAL_NUMBER,
    "zero_date": ZERO_DATE, "zero_marker": r"^0000-00-00([ T]00:00(:00)?)?$",
    "integer": r"^[+-]?[0-9]+$", "decimal": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "leading_zero": r"^[+-]?0[0-9]", "time_of_day": r"[0-9]:[0-9]", "digits": r"^[0-9]+$",
    "money_shape": r"(,|\.[0-9]{2}$)",
}


def params(nulls: tuple[str, ...]) -> dict[str, Any]:
    return {**PARAMS, "nulls": list(nulls)}


def raw(i: int) -> sql.Identifier:
    return sql.Identifier(f"f{i + 1}")


def value(i: int) -> sql.Composable:
    """A field as a run would see it with `normalize = ["trim"]` and the spec's null markers: NULL or text."""
    return sql.SQL("CASE WHEN btrim({0}) = ANY(%(nulls)s::text[]) THEN NULL ELSE NULLIF(btrim({0}), '') END").format(
        raw(i))


def markers_found(conn: psycopg.Connection[Any], n_fields: int) -> dict[int, dict[str, int]]:
    """Per column, how often each known null marker stands alone in a field (spaces aside)."""
    if n_fields == 0:
        return {}
    pairs = sql.SQL(", ").join(sql.SQL("({}, {})").format(sql.Literal(i), raw(i)) for i in range(n_fields))
    rows = execute(conn, sql.SQL(
        "SELECT x.i, btrim(x.v), count(*) FROM {}, LATERAL (VALUES {}) x(i, v)"
        " WHERE btrim(x.v) = ANY(%(markers)s::text[]) GROUP BY 1, 2 ORDER BY 1, 2").format(SAMPLE, pairs),
        {"markers": list(MARKERS)}, label="init: null markers").fetchall()
    found: dict[int, dict[str, int]] = {}
    for i, marker, count in rows:
        found.setdefault(int(i), {})[str(marker)] = int(count)
    return found


@dataclass(frozen=True)
class Facts:
    """One column's aggregates: non-null values, spaces, zero dates, and failures per candidate type."""

    values: int
    trim: bool
    zero: bool
    failures: dict[str, int]
    money_shape: bool
    thousands: bool
    zone: bool
    empty_after_zero: int     # NULLs once zero dates are NULL too


def _first_pass(n_fields: int) -> sql.Composed:
    """Counts, whether values carry spaces, and whether a column holds MySQL zero dates."""
    items: list[sql.Composable] = [sql.SQL("count(*)")]
    for i in range(n_fields):
        v = value(i)
        items += [sql.SQL("count({})").format(v),
                  sql.SQL("coalesce(bool_or({0} <> btrim({0})), false)").format(raw(i)),
                  sql.SQL("coalesce(bool_or({} ~ %(zero_marker)s), false)").format(v)]
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), SAMPLE)


def _fields(i: int, zero: bool) -> tuple[sql.Composable, sql.Composable]:
    """v: the value; d: the same for date/time types, with zero dates as NULL where the column has them."""
    v = value(i)
    d = sql.SQL("CASE WHEN {0} ~* %(zero_date)s THEN NULL ELSE {0} END").format(v) if zero else v
    return v, d


def _predicates(v: sql.Composable, d: sql.Composable) -> dict[str, tuple[sql.Composable, sql.Composable]]:
    """Per candidate type, in the order tried: (the value it judges, whether that value is valid input)."""
    def ok(template: str, x: sql.Composable = v) -> tuple[sql.Composable, sql.Composable]:
        return x, sql.SQL(template).format(x)

    integer = "pg_input_is_valid({0}, '%s') AND {0} ~ %%(integer)s AND {0} !~ %%(leading_zero)s"
    # A digit first: PostgreSQL's date/time parser takes a word for a time zone name and looks for
    # a file of that name, so a column of words costs seconds to judge without it (no date lacks a digit).
    datetime = "CASE WHEN {0} ~ '[0-9]' THEN pg_input_is_valid({0}, '%s') AND {0} !~* %%(special_dt)s ELSE false END"
    return {
        "boolean": ok("pg_input_is_valid({0}, 'boolean') AND {0} !~ %(digits)s"),
        "integer": ok(integer % "integer"),
        "bigint": ok(integer % "bigint"),
        "money_cents": ok("{0} ~ %(money)s"),
        "numeric": ok("pg_input_is_valid({0}, 'numeric') AND {0} ~ %(decimal)s AND {0} !~ %(leading_zero)s"
                      " AND {0} !~* %(special_num)s"),
        "date": ok((datetime % "date") + " AND {0} !~ %(time_of_day)s", d),
        "timestamp": ok(datetime % "timestamp", d),
        "uuid": ok("pg_input_is_valid({0}, 'uuid')"),
    }


KINDS = tuple(_predicates(sql.SQL("x"), sql.SQL("x")))


def _second_pass(n_fields: int, zero_columns: set[int]) -> sql.Composed:
    """Per column: how many values fail each candidate, the money shape, offsets, and empties."""
    items: list[sql.Composable] = []
    for i in range(n_fields):
        v, d = _fields(i, i in zero_columns)
        items += [sql.SQL("count(*) FILTER (WHERE {} IS NOT NULL AND NOT ({}))").format(x, valid)
                  for x, valid in _predicates(v, d).values()]
        items.append(sql.SQL("coalesce(bool_or({} ~ %(money_shape)s), false)").format(v))
        items.append(sql.SQL("coalesce(bool_or(strpos({}, ',') > 0), false)").format(v))
        # An offset or zone: PostgreSQL's timestamp input silently drops it, timestamptz keeps it.
        items.append(sql.SQL(
            "coalesce(bool_or({0} ~ %(offset)s OR CASE WHEN {0} ~ '[0-9]' AND pg_input_is_valid({0}, 'timestamp')"
            " AND pg_input_is_valid({0}, 'timestamptz') AND {0} !~* %(special_dt)s"
            " THEN ({0}::timestamptz AT TIME ZONE 'UTC') <> {0}::timestamp END), false)").format(d))
        items.append(sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(d))
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), SAMPLE)


def column_facts(conn: psycopg.Connection[Any], n_fields: int, nulls: tuple[str, ...]) -> tuple[int, list[Facts]]:
    """The number of sampled records, and every column's facts with `nulls` read as NULL."""
    p = params(nulls)
    first = execute(conn, _first_pass(n_fields), p, label="init: counts").fetchone()
    assert first is not None
    zero_columns = {i for i in range(n_fields) if first[1 + 3 * i + 2]}
    second = execute(conn, _second_pass(n_fields, zero_columns), p, label="init: types").fetchone() if n_fields else ()
    assert second is not None
    width = len(KINDS) + 4
    facts = []
    for i in range(n_fields):
        results = second[width * i:width * (i + 1)]
        facts.append(Facts(values=int(first[1 + 3 * i]), trim=bool(first[1 + 3 * i + 1]), zero=i in zero_columns,
                           failures=dict(zip(KINDS, (int(r) for r in results[:len(KINDS)]))),
                           money_shape=bool(results[-4]), thousands=bool(results[-3]), zone=bool(results[-2]),
                           empty_after_zero=int(results[-1])))
    return int(first[0]), facts


def _tokens(name: str) -> set[str]:
    return set(name.split("_"))


def plainly_money(name: str, header: str, thousands: bool) -> bool:
    """An amount by its name, or a price with a currency in its header or thousands separators in its values."""
    tokens = _tokens(name)
    if tokens & _MONEY_WORDS:
        return True
    return bool(tokens & _PRICE_WORDS) and (bool(_CURRENCY.search(header)) or thousands)


def small_code(name: str) -> bool:
    return bool(_tokens(name) & _SMALL_CODE_WORDS)


def decide(name: str, header: str, facts: Facts) -> str:
    """The type every value fits that lasts: bigint for integers (integer for small codes), numeric for
    decimals unless plainly money, then dates and times, uuids, else text."""
    failures = facts.failures
    if facts.values == 0:
        return "text"
    if failures["boolean"] == 0:
        return "boolean"
    if failures["bigint"] == 0:
        return "integer" if small_code(name) and failures["integer"] == 0 else "bigint"
    if failures["money_cents"] == 0 and facts.money_shape and plainly_money(name, header, facts.thousands):
        return "money_cents"
    for kind in ("numeric", "date", "timestamp", "uuid"):
        if failures[kind] == 0:
            return "timestamptz" if kind == "timestamp" and facts.zone else kind
    return "text"


def adopted(found: dict[int, dict[str, int]], kinds: dict[int, str]) -> tuple[str, ...]:
    """The markers that stand in for values of a column typed other than text (with every found marker NULL).

    A marker seen only among text (`NA` as Namibia's country code, `None` as an answer) is a value.
    """
    return tuple(m for m in MARKERS if any(m in found.get(i, {}) and kind != "text" for i, kind in kinds.items()))


# A column stays text when a few values do not fit; say which type they kept it from.
NEAR_MISS = 0.05


def _failing(conn: psycopg.Connection[Any], i: int, zero: bool, kind: str, nulls: tuple[str, ...]) -> tuple[str, ...]:
    """Up to three values that keep column i from being `kind`, as they stand in the file."""
    x, valid = _predicates(*_fields(i, zero))[kind]
    rows = execute(conn, sql.SQL(
        "SELECT {0} FROM {1} WHERE {2} IS NOT NULL AND NOT ({3}) GROUP BY {0} ORDER BY min(_rec) LIMIT 3").format(
        raw(i), SAMPLE, x, valid), params(nulls), label="init: near miss").fetchall()
    return tuple(str(r[0]) for r in rows)


def examples(conn: psycopg.Connection[Any], i: int, nulls: tuple[str, ...]) -> tuple[str, ...]:
    rows = execute(conn, sql.SQL(
        "SELECT {0} FROM {1} WHERE {2} IS NOT NULL GROUP BY {0} ORDER BY min(_rec) LIMIT 3").format(
        raw(i), SAMPLE, value(i)), params(nulls), label="init: examples").fetchall()
    return tuple(str(r[0]) for r in rows)


def near_miss(conn: psycopg.Connection[Any], i: int, name: str, header: str, facts: Facts,
              nulls: tuple[str, ...]) -> tuple[str, int, tuple[str, ...]] | None:
    """For a text column: the type a few values (at most NEAR_MISS of them) kept it from, and those values."""
    integer = "integer" if small_code(name) else "bigint"
    for kind in (integer, "money_cents", "numeric", "date", "timestamp", "uuid"):
        if kind == "money_cents" and not plainly_money(name, header, facts.thousands):
            continue
        if facts.failures[kind] <= facts.values * NEAR_MISS:
            shown = "timestamptz" if kind == "timestamp" and facts.zone else kind
            return shown, facts.failures[kind], _failing(conn, i, facts.zero, kind, nulls)
    return None


def sequence_from_one(conn: psycopg.Connection[Any], i: int, nulls: tuple[str, ...]) -> bool:
    """Whether an integer column numbers the records 1, 2, 3, ... (R's and pandas' row names)."""
    row = execute(conn, sql.SQL("SELECT coalesce(bool_and({0}::numeric = _rec), false) FROM {1}").format(
        value(i), SAMPLE), params(nulls), label="init: row numbers").fetchone()
    return bool(row and row[0])


# Dates written with slashes or dots (`01/02/2024`) mean a different day under another DateStyle.
_NUMERIC_DATE = r"^[0-9]{1,2}[/.-][0-9]{1,2}[/.-][0-9]{2,4}"


def date_style_note(conn: psycopg.Connection[Any], i: int, nulls: tuple[str, ...]) -> str | None:
    """For a date/time column: whether its values read day and month by the session's DateStyle, said in words."""
    row = execute(conn, sql.SQL("SELECT coalesce(bool_or({} ~ %(numeric_date)s), false), current_setting('DateStyle')"
                                " FROM {}").format(value(i), SAMPLE),
                  {**params(nulls), "numeric_date": _NUMERIC_DATE}, label="init: date style").fetchone()
    if not row or not row[0]:
        return None
    order = str(row[1]).split(",")[-1].strip()
    return (f"dates like 01/02/2024 were read with DateStyle {order} (this server's): a run on a server with"
            " another DateStyle reads them otherwise; give `format` if the file's order is fixed")
