"""The key `pgstage init` drafts: the smallest combination of columns that is unique and never
empty in the sample, made of identifiers, dates/times and categories, never of measures.

A wrong key loses data silently: a run collapses the records that share it as `duplicate`.
So a column of numbers that happens to be unique in a sample (a reading, a coordinate, a row
number) is never chosen, and when nothing qualifies the draft appends every record instead.
The sample decides uniqueness by the typed values, as the merge compares them.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

import psycopg
from psycopg import sql

from pgstage._init_types import DATE_TYPES, SAMPLE, params, value
from pgstage.db import execute

# Name parts that make a column an identifier whatever its type (`id`, `order_id`, `sku`, `iso_code`).
_ID_ANYWHERE = frozenset(("id", "uuid", "guid"))
_ID_LAST = frozenset(("id", "key", "code", "uuid", "guid", "sku", "ref", "nr", "no", "number", "num", "isbn"))
# Integer columns whose name says they are a point in time (`year`, `fiscal_month`).
_PERIOD = frozenset(("year", "month", "week", "quarter", "day", "date", "period", "yr"))
RANK = {"identifier": 0, "time": 1, "category": 2}
MAX_KEY_COLUMNS = 3
# Pairs and triples are tried among this many of the best-ranked columns (220 triples at most).
MAX_KEY_CANDIDATES = 12
KEYS_TABLE = "pgstage_init_keys"


@dataclass(frozen=True)
class Column:
    """What the key choice needs to know of a drafted column."""

    index: int            # position in the sample table
    name: str
    type: str
    never_empty: bool
    row_number: bool = False   # its values are 1, 2, 3, ... in record order


@dataclass(frozen=True)
class KeyChoice:
    key: tuple[str, ...]            # () when no combination qualifies: the draft appends
    why: tuple[str, ...]            # the comment lines above it


def role(name: str, kind: str) -> str:
    """identifier, time, category or measure: what a column is, by its name and type."""
    tokens = name.split("_")
    if kind == "boolean":
        return "measure"
    if kind == "uuid" or _ID_ANYWHERE & set(tokens) or tokens[-1] in _ID_LAST:
        return "identifier"
    if kind in DATE_TYPES or (kind in ("integer", "bigint") and _PERIOD & set(tokens)):
        return "time"
    if kind == "text":
        return "category"
    return "measure"


def _typed(c: Column) -> sql.Composable:
    if c.type == "money_cents":
        return sql.SQL("replace({}, ',', '')::numeric").format(value(c.index))
    if c.type == "text":
        return value(c.index)
    return sql.SQL("({})::{}").format(value(c.index), sql.SQL(c.type))  # a type init itself chose


def _spelled(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"({', '.join(names)})"


def choose_key(conn: psycopg.Connection[Any], columns: list[Column], records: int,
               nulls: tuple[str, ...]) -> KeyChoice:
    """The key and the reasons for it, from the sample's typed values."""
    usable = [c for c in columns if c.never_empty]
    if records == 0 or not usable:
        return _keyless(records, [], [])
    # The typed values once, so that each combination below is a plain DISTINCT over them.
    execute(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(KEYS_TABLE)), label="init: keys table")
    execute(conn, sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {}").format(
        sql.Identifier(KEYS_TABLE),
        sql.SQL(", ").join(sql.SQL("{} AS {}").format(_typed(c), sql.Identifier(f"k{c.index}")) for c in usable),
        SAMPLE), params(nulls), label="init: keys table")
    row = execute(conn, sql.SQL("SELECT {} FROM {}").format(
        sql.SQL(", ").join(sql.SQL("count(DISTINCT {})").format(sql.Identifier(f"k{c.index}")) for c in usable),
        sql.Identifier(KEYS_TABLE)), label="init: distinct values").fetchone()
    assert row is not None
    distinct = {c.index: int(n) for c, n in zip(usable, row)}
    roles = {c.index: role(c.name, c.type) for c in usable}
    measures = [c for c in usable if roles[c.index] == "measure" and distinct[c.index] == records]
    candidates = sorted((c for c in usable if roles[c.index] != "measure"),
                        key=lambda c: (RANK[roles[c.index]], distinct[c.index], c.index))
    notes = _not_keys(measures)
    unique: list[tuple[Column, ...]] = [(c,) for c in candidates if distinct[c.index] == records]
    size = 1
    while not unique and size < MAX_KEY_COLUMNS and len(candidates) > size:
        size += 1
        unique = _unique_combinations(conn, candidates[:MAX_KEY_CANDIDATES], size, records)
    if not unique:
        return _keyless(records, candidates, notes)
    unique.sort(key=lambda combo: (sum(RANK[roles[c.index]] for c in combo), sum(distinct[c.index] for c in combo),
                                   [c.index for c in combo]))
    best = unique[0]
    why = [f"# key: the smallest combination of columns unique and never empty in the {records:,} sampled records",
           "#   (identifiers first, then dates and times with categories; never measures)"]
    # One day's file of a series (a date with one value) keyed by categories alone would let the
    # next day's file overwrite it: the date belongs in the key.
    if records > 1 and not any(roles[c.index] in ("identifier", "time") for c in best):
        day = next((c for c in candidates if roles[c.index] == "time" and distinct[c.index] == 1), None)
        if day is not None:
            best = (day, *best)
            why.append(f"#   {day.name} holds one value in the sample (one period of a series): it is part of the key")
    others = [_spelled(tuple(c.name for c in combo)) for combo in unique[1:4]]
    if others:
        why.append(f"#   also unique: {', '.join(others)}")
    return KeyChoice(tuple(c.name for c in sorted(best, key=lambda c: c.index)), tuple(why + notes))


def _unique_combinations(conn: psycopg.Connection[Any], candidates: list[Column], size: int,
                         records: int) -> list[tuple[Column, ...]]:
    combos = list(combinations(candidates, size))
    if not combos:
        return []
    items = [sql.SQL("(SELECT count(*) FROM (SELECT DISTINCT {} FROM {}) d)").format(
        sql.SQL(", ").join(sql.Identifier(f"k{c.index}") for c in combo), sql.Identifier(KEYS_TABLE))
        for combo in combos]
    row = execute(conn, sql.SQL("SELECT {}").format(sql.SQL(", ").join(items)), label="init: key combinations").fetchone()
    assert row is not None
    return [combo for combo, n in zip(combos, row) if int(n) == records]


def _not_keys(measures: list[Column]) -> list[str]:
    if not measures:
        return []
    said = [f"{c.name} (numbers the records 1, 2, 3, ...: a row number)" if c.row_number else f"{c.name} ({c.type})"
            for c in measures]
    more = f" and {len(said) - 4} more" if len(said) > 4 else ""
    return [f"#   unique in the sample but measures, not keys: {', '.join(said[:4])}{more}"]


def _keyless(records: int, candidates: list[Column], notes: list[str]) -> KeyChoice:
    tried = ", ".join(c.name for c in candidates[:MAX_KEY_CANDIDATES]) or "none"
    return KeyChoice((), (
        f"# no key: no combination of up to {MAX_KEY_COLUMNS} identifier, date/time or category columns is unique"
        f" and never empty in the {records:,} sampled records (tried: {tried}).",
        "#   A key that is not unique would merge distinct records as duplicates, so every record is appended;",
        "#   name a key and choose an upsert strategy if the data has one.", *notes))
