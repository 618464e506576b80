"""Cast first: validate a batch by casting its typed values, learning the bad ones from the casts' errors.

Checking a date with `pg_input_is_valid` and then casting it parses it twice. A pass that only
casts parses it once, and fails at the first value that is not valid input. That failure names
the value (`date/time field value out of range: "2024-02-30"`); the run finds which column of
the batch holds it, and the batch's next attempt refuses that value uncast, as the full pass
would. Bad values in exports repeat (a placeholder date, `#N/A`, a broken default), so a few
attempts usually learn them all, and the batch and the run's later batches are cast once.

A column that keeps failing on new values, or whose failure quotes only part of a value (an
unknown time zone) or none (`numeric field overflow`), is checked again; a failure that names
nothing of the batch (a domain's check constraint) ends casting first for the rest of the run.

The price: a failed attempt costs the pass up to its first bad value, nothing when bad values
are common; a batch whose bad values are rare and all different pays up to `MAX_ATTEMPTS` of
them before its full pass, and after `MAX_REFUSED` values the run checks that column, so this
is paid for a few batches. Nothing learnt here changes a result: a refused value is invalid
input for the column's type, which is verified before it is refused, and it is rejected with
the same reason as by the full pass.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import NUMERIC_OVERFLOW, DatabaseError
from pgstage.pipeline import transform
from pgstage.pipeline.stage import StagedBatch
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

# Attempts of one batch before its full pass: each failed one costs the work up to its first bad value.
MAX_ATTEMPTS = 4
# Different bad values of one column before the column is checked again instead of refusing them one by one.
MAX_REFUSED = 8


@dataclass(frozen=True)
class CastPlan:
    """How one pass casts first: the columns it still checks, and per column the values it refuses uncast."""

    checked: frozenset[str] = frozenset()
    refused: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass
class CastLuck:
    """What the run's batches learnt about casting first, shared by them (they validate on several threads)."""

    failed: bool = False          # a failure nothing could explain: the later batches validate in full
    checked: set[str] = field(default_factory=set)
    refused: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def plan(self) -> CastPlan | None:
        with self._lock:
            if self.failed:
                return None
            return CastPlan(frozenset(self.checked), {c: tuple(v) for c, v in self.refused.items()})

    def learn(self, column: str, value: str | None) -> None:
        """Refuse `value` in `column` from now on; None, or one value too many: check the column."""
        with self._lock:
            values = self.refused.setdefault(column, [])
            if value is not None and value not in values:
                values.append(value)
            if value is None or len(values) > MAX_REFUSED:
                self.checked.add(column)
                self.refused.pop(column)

    def give_up(self) -> None:
        with self._lock:
            self.failed = True


def candidates(spec: Spec, types: dict[str, ColumnType]) -> list[str]:
    """The columns a pass may cast first: those whose cast refuses exactly what the check refuses."""
    return [n for n, c in spec.columns.items() if c.from_ is not None and transform.cast_raises(c, types[n])]


def quoted_value(message: str) -> str | None:
    """The input PostgreSQL quotes in its message: between its first and last double quote."""
    first, last = message.find('"'), message.rfind('"')
    return message[first + 1:last] if 0 <= first < last else None


def culprit(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], staged: StagedBatch,
            plan: CastPlan, error: DatabaseError, collation: str | None) -> list[tuple[str, str | None]]:
    """The columns and values that failed a cast-first pass; None as a value: check that column instead.

    A value is refused in a column whose type refuses it (asked once, of PostgreSQL) when the
    batch holds it there, normalized as the pass normalizes it. A message that quotes only a
    part of the value (`time zone "mars/base" not recognized`) names the first column that
    holds the part, in any case, and that column is checked. `numeric field overflow` quotes
    nothing: every numeric column with a precision is checked. Empty: the message names nothing
    of the batch. Each search stops at the first record that matches, near where the pass stopped.
    """
    columns = [n for n in candidates(spec, types) if n not in plan.checked]
    value = quoted_value(error.diagnostics.message or "")
    if value is None:
        if error.sqlstate == NUMERIC_OVERFLOW:
            return [(n, None) for n in columns if types[n].category == "N" and "(" in types[n].name]
        return []
    normalized = {n: transform.normalized(staged.column(spec.columns[n].from_ or ""), spec.columns[n], spec.source.null,
                                          collation) for n in columns}
    refusing = {t for (t,) in execute(conn, sql.SQL("SELECT t FROM unnest(%s::text[]) t WHERE NOT pg_input_is_valid(%s, t)"),
                                      (sorted({types[n].name for n in columns}), value),
                                      label="validate: cast first, the failed value").fetchall()}
    for name in columns:
        if (types[name].name in refusing and value not in plan.refused.get(name, ())
                and _holds(conn, staged, sql.SQL("{} = {}").format(normalized[name], sql.Literal(value)))):
            return [(name, value)]
    for name in columns:
        if _holds(conn, staged, sql.SQL("strpos(lower({}), lower({})) > 0").format(normalized[name], sql.Literal(value))):
            return [(name, None)]
    return []


def _holds(conn: psycopg.Connection[Any], staged: StagedBatch, condition: sql.Composable) -> bool:
    found = execute(conn, sql.SQL("SELECT EXISTS (SELECT FROM {} s WHERE {})").format(staged.rows(), condition),
                    label="validate: cast first, the failed column").fetchone()
    return bool(found and found[0])
