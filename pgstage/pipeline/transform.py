"""Transform: the SQL expressions that turn a raw text field into a target value.

These builders are pure (no I/O). They run inside validate's single pass over the staging
table, so each value is cleaned, normalized, checked and cast exactly once per row:

    raw ──clean──▶ t (trim, empty and null strings → NULL)
        ──normalize──▶ n (lower/upper, zero dates → NULL, value map)
        ──parse──▶ ok (is n valid input for the type?)
        ──cast──▶ v (the typed target value, NULL when not ok)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import SpecError
from pgstage.spec import MONEY_CENTS, ColumnSpec, Spec

# Type names are spliced into casts, so they must be plain names with an optional typmod.
TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,62}(\(\s*\d{1,4}\s*(,\s*\d{1,4}\s*)?\))?(\[\])?$")

# Decimal text with optional thousands separators and at most two decimals, at most 15 integer digits.
MONEY = r"^[+-]?([0-9]{1,3}(,[0-9]{3}){1,4}|[0-9]{1,15})(\.[0-9]{1,2})?$"
# MONEY's common case, without separators or a digit limit: PostgreSQL's regex engine pays for
# counted repetitions, and this test is three times cheaper than MONEY (the limit is checked apart).
MONEY_PLAIN = r"^[+-]?[0-9]+(\.[0-9][0-9]?)?$"
# Zero dates that exports use for "no date": MySQL's 0000-00-00 and the Unix epoch.
ZERO_DATE = r"^(0000-00-00([ T]00:00(:00)?)?|1970-01-01([ T]00:00(:00(\.0+)?)?)?\s*(Z|[+-]00(:?00)?|UTC)?|0)$"
# Words PostgreSQL's date/time and number input accept that no data file should carry.
# `j`/`julian` mark a Julian day: PostgreSQL reads `j .` (no digit at all) as day 0, 4714-11-24 BC.
SPECIAL_DATETIME = r"(^|[^a-z])(now|today|yesterday|tomorrow|infinity|epoch|allballs|julian|j)([^a-z]|$)"
SPECIAL_NUMBER = r"^\s*[+-]?(nan|inf|infinity)\s*$"
# An explicit UTC offset after a time of day, which a `timezone` column must not silently drop.
OFFSET = r"[0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?\s*(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


@dataclass(frozen=True)
class ColumnType:
    """A target column's type as PostgreSQL spells it, and its category (D date/time, N numeric, S text...)."""

    name: str
    category: str

    @property
    def cast(self) -> sql.SQL:
        # Safe to splice: checked against TYPE_NAME and canonicalized by PostgreSQL itself.
        return sql.SQL(self.name)


def resolve_types(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, ColumnType]:
    """Ask PostgreSQL what each column's type is; every unknown type is reported at once."""
    problems = []
    for name, column in spec.columns.items():
        if not TYPE_NAME.match(column.pg_type):
            problems.append(f"columns.{name}.type: {column.type!r} is not a type name")
            continue
        found = execute(conn, sql.SQL("SELECT to_regtype({})").format(sql.Literal(column.pg_type)),
                        label="types: lookup").fetchone()
        if found is None or found[0] is None:
            problems.append(f"columns.{name}.type: PostgreSQL has no type {column.type!r}")
    if problems:
        raise SpecError(f"{spec.path or 'spec'}: unknown column types", problems=tuple(problems),
                        hint="use PostgreSQL type names (text, bigint, numeric(12,2), timestamptz, ...) or money_cents")
    names = list(spec.columns)
    probe = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(f"c{i}"), sql.SQL(spec.columns[n].pg_type)) for i, n in enumerate(names))
    with conn.transaction():
        execute(conn, sql.SQL("CREATE TEMP TABLE pgstage_type_probe ({}) ON COMMIT DROP").format(probe),
                label="types: probe")
        rows = execute(conn, sql.SQL(
            "SELECT a.attnum, format_type(a.atttypid, a.atttypmod), t.typcategory FROM pg_attribute a"
            " JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = 'pgstage_type_probe'::regclass AND a.attnum > 0 ORDER BY a.attnum"),
            label="types: canonical").fetchall()
    types = {names[attnum - 1]: ColumnType(name, category) for attnum, name, category in rows}
    _check_rule_types(spec, types)
    return types


def _check_rule_types(spec: Spec, types: dict[str, ColumnType]) -> None:
    problems = []
    for name, column in spec.columns.items():
        kind = types[name]
        if (column.min is not None or column.max is not None) and kind.category != "N":
            problems.append(f"columns.{name}: min/max need a numeric type, not {kind.name}")
        if (column.format or column.timezone) and kind.category != "D":
            problems.append(f"columns.{name}: format/timezone need a date or time type, not {kind.name}")
        if column.zero_is_null and kind.category != "D":
            problems.append(f"columns.{name}: zero_is_null needs a date or time type, not {kind.name}")
    if problems:
        raise SpecError(f"{spec.path or 'spec'}: rules that do not fit their column's type", problems=tuple(problems))


def clean(raw: sql.Composable, column: ColumnSpec, nulls: tuple[str, ...]) -> sql.Composable:
    """Trim if asked; the empty string and the source's null strings become NULL."""
    expr: sql.Composable = trimmed(raw) if "trim" in column.normalize else raw
    expr = sql.SQL("NULLIF({}, '')").format(expr)
    for null in nulls:
        expr = sql.SQL("NULLIF({}, {})").format(expr, sql.Literal(null))
    return expr


def trimmed(raw: sql.Composable) -> sql.Composable:
    """`btrim(raw)`, called only for text with a space at either end when raw is a staged column.

    In a multibyte database `btrim` measures every character of the value and of its set before
    it trims (two trimmed columns: 0.15–0.2 µs a row), while most values have nothing to trim.
    LIKE tests the first and the last character without that (in UTF-8 it compares bytes, and a
    space byte is always a space). raw is named three times, so an expression (a JSON field) is
    trimmed as before. The patterns are spelled `E' \\x25'` and `E'\\x25 '` (`' %'`, `'% '`): a
    percent sign in the text would be a placeholder to psycopg where a caller passes parameters.
    """
    if not isinstance(raw, sql.Identifier):
        return sql.SQL("btrim({})").format(raw)
    return sql.SQL("CASE WHEN {0} LIKE E' \\x25' OR {0} LIKE E'\\x25 ' THEN btrim({0}) ELSE {0} END").format(raw)


def case_collation(conn: psycopg.Connection[Any]) -> str | None:
    """`pg_c_utf8` where the server has it (PostgreSQL 17+, UTF8 database), else None.

    Its case mapping is Unicode's, independent of the database's locale, and several times
    cheaper than a libc or ICU locale's: `lower`/`upper` are a large share of validation.
    """
    row = execute(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_collation WHERE collname = 'pg_c_utf8')"
                                " AND pg_encoding_to_char(encoding) = 'UTF8' FROM pg_database"
                                " WHERE datname = current_database()"), label="types: collation").fetchone()
    return "pg_c_utf8" if row and row[0] else None


def normalize(t: sql.Composable, column: ColumnSpec, collation: str | None = None) -> sql.Composable:
    """Case folding in the order given, zero dates to NULL, then the value map."""
    expr = t
    for step in column.normalize:
        if step != "trim":
            folded = sql.SQL("lower({})" if step == "lower" else "upper({})").format(expr)
            expr = folded if collation is None else sql.SQL("{} COLLATE {}").format(
                sql.SQL("lower({} COLLATE {})" if step == "lower" else "upper({} COLLATE {})").format(
                    expr, sql.Identifier(collation)), sql.SQL('"default"'))
    if column.zero_is_null:
        expr = sql.SQL("CASE WHEN {0} ~* {1} THEN NULL ELSE {0} END").format(expr, sql.Literal(ZERO_DATE))
    if column.map:
        whens = sql.SQL(" ").join(
            sql.SQL("WHEN {} THEN {}").format(sql.Literal(k), sql.Literal(v)) for k, v in column.map.items())
        expr = sql.SQL("CASE {0} {1} ELSE {0} END").format(expr, whens)
    return expr


def _wall_clock(n: sql.Composable, column: ColumnSpec) -> sql.Composable:
    """A `timezone` column's text as the wall-clock time it names (NULL when it names none).

    With `format`, to_timestamp reads it (in the session's UTC, so AT TIME ZONE 'UTC' gives
    the wall clock back); else the timestamp input function, behind a cheap test for junk, and
    text with a UTC offset is none (the timestamp input would drop the offset silently).
    """
    if column.format:
        return sql.SQL("(pgstage.try_to_timestamp({}, {}) AT TIME ZONE 'UTC')").format(n, sql.Literal(column.format))
    return sql.SQL("CASE WHEN {1} AND pg_input_is_valid({0}, 'timestamp') AND {0} !~ {2} THEN {0}::timestamp END"
                   ).format(n, _may_be_datetime(n), sql.Literal(OFFSET))


# timestamptz's range in UTC, two days in from either end: AT TIME ZONE cannot overflow between them.
_LOW_WALL, _LOW_INSTANT = "4714-11-26 00:00:00 BC", "4714-11-26 00:00:00+00 BC"
_HIGH_WALL, _HIGH_INSTANT = "294276-12-29 23:59:59.999999", "294276-12-29 23:59:59.999999+00"


def in_zone(p: sql.Composable, zone: str) -> sql.Composable:
    """Whether the wall clock p (a timestamp) is an instant in `zone` that timestamptz can hold.

    timestamp and timestamptz span the same instants, so a wall clock within a day of either
    end (4714-11-24 BC, 294276-12-31) is valid timestamp input whose instant in a zone east
    (at the bottom) or west (at the top) of UTC does not exist: `p AT TIME ZONE zone` raises
    22008 and would fail the run. Such a p is placed two days inward instead, where its zone's
    offset is the same (local mean time before a zone's first rule; the yearly rule at the
    top) and the conversion cannot overflow, and that instant is compared with the bound moved
    inward alike. Any other p costs two comparisons with constants.
    """
    # `<@` names p once: where p is an expression (`typed`), the common case computes it once.
    return sql.SQL(
        "CASE WHEN {0} <@ tsrange({1}, {3}, '[]') THEN true"
        " WHEN {0} < {1}::timestamp THEN ({0} + interval '2 days') AT TIME ZONE {5} >= {2}::timestamptz"
        " WHEN {0} > {3}::timestamp THEN ({0} - interval '2 days') AT TIME ZONE {5} <= {4}::timestamptz"
        " ELSE true END").format(p, sql.Literal(_LOW_WALL), sql.Literal(_LOW_INSTANT), sql.Literal(_HIGH_WALL),
                                 sql.Literal(_HIGH_INSTANT), sql.Literal(zone))


def parsed(n: sql.Composable, column: ColumnSpec) -> sql.Composable | None:
    """The value, computed once per row, that judging and casting both read (NULL when n does not fit).

    A `timezone` column's wall clock (see `in_zone` for why it is judged apart from parsing); a
    `format` column's timestamptz; a money column's numeric, as most amounts are the text
    numeric prints for them and need no pattern (see `valid`).
    """
    if column.timezone:
        return _wall_clock(n, column)
    if column.format:
        return sql.SQL("pgstage.try_to_timestamp({}, {})").format(n, sql.Literal(column.format))
    if column.type == MONEY_CENTS:
        return sql.SQL("CASE WHEN pg_input_is_valid({0}, 'numeric') THEN {0}::numeric END").format(n)
    return None


Validity = Literal["money", "format", "timezone", "text", "datetime", "input"]


def validity(column: ColumnSpec, kind: ColumnType) -> Validity:
    """How `valid` judges the column's text: the one place that tells the column kinds apart.

    `money` (a pattern), `format` (the parsed value), `timezone` (wall-clock input without an
    offset), `text` (any text is valid), `datetime` and `input` (the type's input function,
    date/time types behind a cheap test for junk).
    """
    if column.type == MONEY_CENTS:
        return "money"
    if column.format:
        return "format"
    if column.timezone:
        return "timezone"
    if kind.name == "text":
        return "text"
    return "datetime" if kind.category == "D" else "input"


def valid(n: sql.Composable, p: sql.Composable | None, column: ColumnSpec, kind: ColumnType) -> sql.Composable:
    """Whether n is valid input for the column's type (NULL is valid here; `required` judges it)."""
    path = validity(column, kind)
    if path == "money":
        # Equal to `n ~ MONEY`: a plain amount needs its integer part (before the dot, after the sign) <= 15 digits.
        pattern = sql.SQL("CASE WHEN {0} ~ {1} THEN strpos({0} || '.', '.') - (left({0}, 1) IN ('+', '-'))::int <= 16"
                          " ELSE {0} ~ {2} END").format(n, sql.Literal(MONEY_PLAIN), sql.Literal(MONEY))
        if p is None:
            return sql.SQL("({} IS NULL OR {})").format(n, pattern)
        # n printed as numeric prints it (digits, '-' only, no leading zero, no exponent) with at most two
        # decimals matches MONEY when its integer part is short enough, and costs a third of the pattern.
        return sql.SQL("({0} IS NULL OR CASE WHEN scale({1}) <= 2 AND {1}::text = {0} THEN abs({1}) < 1e15 ELSE {2} END)"
                       ).format(n, p, pattern)
    if path in ("format", "timezone"):
        assert p is not None, "a format or timezone column is judged by its parsed value"
        if column.timezone:
            return sql.SQL("({} IS NULL OR ({} IS NOT NULL AND {}))").format(n, p, in_zone(p, column.timezone))
        return sql.SQL("({} IS NULL OR {} IS NOT NULL)").format(n, p)
    if path == "text":
        return sql.SQL("true")
    if path == "datetime":
        return sql.SQL("({0} IS NULL OR ({1} AND pg_input_is_valid({0}, {2})))").format(
            n, _may_be_datetime(n), sql.Literal(kind.name))
    limit = length_limit(kind)
    if limit is not None:
        # Text of at most `limit` bytes has at most `limit` characters: valid without the input function
        # (`pg_input_is_valid` 0.06 µs a value, `octet_length` 0.02, which reads the length from the header).
        return sql.SQL("({0} IS NULL OR octet_length({0}) <= {2} OR pg_input_is_valid({0}, {1}))").format(
            n, sql.Literal(kind.name), sql.Literal(limit))
    return sql.SQL("({0} IS NULL OR pg_input_is_valid({0}, {1}))").format(n, sql.Literal(kind.name))


# A character type with a length, as PostgreSQL spells it: any text of at most that many characters is valid input.
_LENGTH_LIMITED = re.compile(r"^(character|character varying)\((\d+)\)$")


def length_limit(kind: ColumnType) -> int | None:
    """The length of a `character(n)` or `character varying(n)` column, else None."""
    found = _LENGTH_LIMITED.match(kind.name)
    return int(found.group(2)) if found else None


def _may_be_datetime(n: sql.Composable) -> sql.Composable:
    """False only for text no date/time type accepts: it has no digit and no special word.

    PostgreSQL's date/time parser takes an unknown word for a time zone name and looks for a
    file of that name (~37 µs; misses are not cached), so junk such as `N/A` or `not a date`
    costs 80 times a valid value. Values that start with a digit pass on the first test.
    """
    return sql.SQL("(ascii({0}) BETWEEN 48 AND 57 OR {0} ~ '[0-9]' OR {0} ~* {1})").format(
        n, sql.Literal(SPECIAL_DATETIME))


# Characters no special word is spelled with: digits, the punctuation of dates and times, and
# the letters T and Z of ISO 8601 (`2024-01-15T10:22:01Z`). Every special word, of dates and
# of numbers, has a letter outside T and Z, under any case folding.
_NOT_SPECIAL = "[^-0-9 :.,+/TZtz]"


def may_be_special(n: sql.Composable) -> sql.Composable:
    """True for every n a special-word pattern can match: n holds a character outside `_NOT_SPECIAL`'s set.

    The cheap test before the word pattern (~1 µs a value, case-insensitive alternatives).
    A letter test is not enough: an ISO 8601 `Z` timestamp has two letters, so every value of
    such a column went through the word pattern. One negated class scans the value once, a
    little cheaper than comparing its lower and upper case, and passes only values with a
    character no date or number of these shapes has.
    """
    return sql.SQL("{} ~ {}").format(n, sql.Literal(_NOT_SPECIAL))


def may_be_special_any(ns: list[sql.Composable]) -> sql.Composable:
    """`may_be_special` of several values in one test: true when any of them passes it.

    Concatenating adds no character, so the joined text holds one outside `_NOT_SPECIAL`'s set
    exactly when one of the values does (a NULL adds nothing, as it passes nothing). A regex
    call is mostly its fixed cost: two timestamp columns tested apart cost 0.75 µs a row, joined
    0.45. Each column's own test still runs behind this one, for the rows it passes.
    """
    joined = sql.SQL(" || ").join(sql.SQL("coalesce({}, '')").format(n) for n in ns)
    return sql.SQL("({}) ~ {}").format(joined, sql.Literal(_NOT_SPECIAL))


def cast_raises(column: ColumnSpec, kind: ColumnType) -> bool:
    """Whether `cast` of n raises exactly when `valid` says false: then the cast can judge alone.

    True where `valid` asks the input function of a date/time, number or boolean type, which
    the cast runs too. Not for text types, whose explicit casts truncate to a length where the
    input function refuses (`varchar(3)`).
    """
    return validity(column, kind) in ("datetime", "input") and kind.category in ("D", "N", "B")


def guarded(column: ColumnSpec, kind: ColumnType, refused: tuple[str, ...] = ()) -> bool:
    """Whether `cast_guard` tests anything: else the cast alone judges the column's values."""
    return validity(column, kind) == "datetime" or bool(refused)


def cast_guard(n: sql.Composable, column: ColumnSpec, kind: ColumnType, refused: tuple[str, ...] = ()) -> sql.Composable:
    """What judges a column cast without `valid`, before the cast: cheap tests of known bad text.

    Text that no date/time type accepts is refused without the parser, and so are the values
    the run already saw the cast refuse (`refused`: invalid input for this type, each one).
    A column whose bad values are all of those is still cast first; any other invalid value
    makes the cast raise.
    """
    tests: list[sql.Composable] = []
    if validity(column, kind) == "datetime":
        tests.append(_may_be_datetime(n))
    if refused:
        tests.append(sql.SQL("{} <> ALL({}::text[])").format(n, sql.Literal(list(refused))))
    if not tests:
        return sql.SQL("true")
    return sql.SQL("({} IS NULL OR ({}))").format(n, sql.SQL(" AND ").join(tests))


def cast(n: sql.Composable, p: sql.Composable | None, column: ColumnSpec, kind: ColumnType) -> sql.Composable:
    """The typed value of a valid n."""
    path = validity(column, kind)
    if path == "money":
        # An amount without separators is valid numeric input, and then p is its value.
        amount = sql.SQL("replace({}, ',', '')::numeric").format(n)
        return sql.SQL("({} * 100)::bigint").format(amount if p is None else sql.SQL("coalesce({}, {})").format(p, amount))
    if path in ("format", "timezone"):
        value = p if p is not None else parsed(n, column)
        assert value is not None, "a format or timezone column has a parsed value"
        if column.timezone:
            value = sql.SQL("{} AT TIME ZONE {}").format(value, sql.Literal(column.timezone))
        return sql.SQL("({})::{}").format(value, kind.cast)
    if path == "text":
        return n
    return sql.SQL("({})::{}").format(n, kind.cast)


def normalized(raw: sql.Composable, column: ColumnSpec, nulls: tuple[str, ...], collation: str | None = None
               ) -> sql.Composable:
    """A raw field cleaned and normalized in one expression, as the validation pass does it over two levels."""
    return normalize(clean(raw, column, nulls), column, collation)


def typed(raw: sql.Composable, column: ColumnSpec, kind: ColumnType, nulls: tuple[str, ...],
          collation: str | None = None) -> sql.Composable:
    """A column's typed value computed from its raw text in one expression, NULL when not valid.

    The validation pass spreads these steps over levels so each runs once; this form is for the
    few places that need one value alone (a key, to find a row before or after validation).
    """
    if column.const is not None:
        return const(column, kind)
    n = normalized(raw, column, nulls, collation)
    if column.timezone and not column.format:
        # One expression cannot name the parsed wall clock once: judge the text, then parse it for the range
        # test and the cast (the validation pass parses it once, in its own level).
        wall = sql.SQL("{}::timestamp").format(n)
        ok = sql.SQL("CASE WHEN {0} IS NULL THEN true WHEN {1} AND pg_input_is_valid({0}, 'timestamp') AND {0} !~ {2}"
                     " THEN {3} ELSE false END").format(n, _may_be_datetime(n), sql.Literal(OFFSET),
                                                        in_zone(wall, column.timezone))
        return sql.SQL("CASE WHEN {} THEN ({} AT TIME ZONE {})::{} END").format(
            ok, wall, sql.Literal(column.timezone), kind.cast)
    p = parsed(n, column)
    return sql.SQL("CASE WHEN {} THEN {} END").format(valid(n, p, column, kind), cast(n, p, column, kind))


def type_message(n: sql.Composable, column: ColumnSpec, kind: ColumnType) -> sql.Composable:
    """Why n is not valid input, in PostgreSQL's words where it has them."""
    if column.type == MONEY_CENTS:
        return sql.SQL("quote_literal({}) || ' is not an amount (digits, optional thousands separators, at most 2 decimals)'").format(n)
    if column.timezone:
        # Only a rejected row's message is built: parsing again here costs nothing on the happy path.
        out_of_range = sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(
            f" is out of range for type timestamp with time zone as wall-clock time in {column.timezone}"))
        if column.format:
            return sql.SQL("CASE WHEN pgstage.try_to_timestamp({0}, {1}) IS NOT NULL THEN {2}"
                           " ELSE quote_literal({0}) || {3} END").format(
                n, sql.Literal(column.format), out_of_range, sql.Literal(f" does not match format {column.format!r}"))
        return sql.SQL("CASE WHEN {0} ~ {1} THEN quote_literal({0}) || {2}"
                       " WHEN pg_input_is_valid({0}, 'timestamp') THEN {3} ELSE {4} END").format(
            n, sql.Literal(OFFSET), sql.Literal(f" carries a UTC offset, but the column reads wall-clock time in {column.timezone}"),
            out_of_range, _postgres_message(n, "timestamp"))
    if column.format:
        return sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(f" does not match format {column.format!r}"))
    return _postgres_message(n, kind.name)


# The type names PostgreSQL's date and timestamp input functions put in their messages.
_INPUT_NAMES = [(re.compile(r"^date$"), "date"),
                (re.compile(r"^timestamp(\(\d\))? without time zone$|^timestamp$"), "timestamp"),
                (re.compile(r"^timestamp(\(\d\))? with time zone$"), "timestamp with time zone")]


def _postgres_message(n: sql.Composable, type_name: str) -> sql.Composable:
    """PostgreSQL's message for invalid input n, without its parser where the words are known.

    For date and timestamp types, text with no digit and no special word gets the plain syntax
    message (the parser's other messages need digits, or a time type's zone), so the time-zone
    file lookups of `_may_be_datetime` are not paid for the message either.
    """
    message = sql.SQL("(pg_input_error_info({}, {})).message").format(n, sql.Literal(type_name))
    for pattern, input_name in _INPUT_NAMES:
        if pattern.match(type_name):
            return sql.SQL("CASE WHEN {0} THEN {1} ELSE {2} || {3} || '\"' END").format(
                _may_be_datetime(n), message, sql.Literal(f'invalid input syntax for type {input_name}: "'), n)
    return message


def const(column: ColumnSpec, kind: ColumnType) -> sql.Composable:
    """A `const` column's value, typed."""
    value = column.const
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return sql.SQL("{}::{}").format(sql.Literal(text), kind.cast)


# Numeric types whose input accepts NaN and Infinity; integers refuse them already.
_SPECIAL_NUMBER_TYPES = ("numeric", "real", "double precision")


def special_pattern(column: ColumnSpec, kind: ColumnType) -> str | None:
    """The special-input pattern to refuse for this column, if any."""
    if column.allow_special or column.type == MONEY_CENTS:
        return None
    if kind.category == "N":
        return SPECIAL_NUMBER if kind.name.startswith(_SPECIAL_NUMBER_TYPES) else None
    return SPECIAL_DATETIME if kind.category == "D" else None
