"""The run's partition window: which values of `partition.column` belong to `--partition DATE`.

Shared by validation (a record outside the window is rejected with rule `partition`) and by
the replace_partition merge (the target rows it deletes). Both must draw the same line, so
the bounds are computed here once: a half-open range [lo, hi) of local midnights, which puts
23:59:59.999 in its day and midnight in the next, and for a timestamptz column reads those
midnights in `partition.timezone`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

from psycopg import sql

from pgstage.errors import SpecError, UsageError
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

# format_type() names of the column types a partition can be cut from.
_TIMESTAMPTZ = "timestamp with time zone"
_KINDS = ("date", "timestamp without time zone", _TIMESTAMPTZ)


@dataclass(frozen=True)
class Window:
    """[lo, hi) in local dates; `label` is the partition as the user reads it (2024-01-15 or 2024-01)."""

    column: str
    lo: date
    hi: date
    timezone: str
    grain: str
    kind: str            # the column's PostgreSQL type name

    @property
    def label(self) -> str:
        return self.lo.isoformat() if self.grain == "day" else self.lo.strftime("%Y-%m")


def window(spec: Spec, types: dict[str, ColumnType], day: date | str) -> Window:
    """The window of `day` by the spec's grain; a spec without a usable partition column is refused."""
    part = spec.pipeline.partition
    if part is None:
        raise UsageError(f"pipeline {spec.pipeline.name} has no [pipeline] partition to replace")
    kind = types[part.column].name
    if kind not in _KINDS:
        raise SpecError(f"partition.column {part.column!r} is {kind}; a partition is cut from a date,"
                        " timestamp or timestamptz column", hint="point partition.column at a date or time column")
    day = date.fromisoformat(day) if isinstance(day, str) else day
    if part.grain == "day":
        lo, hi = day, day + timedelta(days=1)
    else:
        lo = day.replace(day=1)
        hi = (lo + timedelta(days=32)).replace(day=1)
    return Window(part.column, lo, hi, part.timezone, part.grain, kind)


def _bound(w: Window, value: date) -> sql.Composable:
    """A bound as a value of the column's type (a literal: it also goes into DDL and CREATE TABLE AS)."""
    if w.kind == _TIMESTAMPTZ:
        return sql.SQL("({}::timestamp AT TIME ZONE {})").format(sql.Literal(value.isoformat()), sql.Literal(w.timezone))
    return sql.SQL("{}::{}").format(sql.Literal(value.isoformat()), sql.SQL(w.kind))


def bounds(w: Window) -> tuple[sql.Composable, sql.Composable]:
    """(lo, hi) as SQL values of the column's type: what a native partition's FOR VALUES takes."""
    return _bound(w, w.lo), _bound(w, w.hi)


def inside(w: Window, alias: str | None = None) -> sql.Composed:
    """True when the column's value lies in the window (NULL when it is NULL)."""
    col = sql.Identifier(alias, w.column) if alias else sql.Identifier(w.column)
    lo, hi = bounds(w)
    return sql.SQL("({c} >= {lo} AND {c} < {hi})").format(c=col, lo=lo, hi=hi)


def local_date(w: Window, value: sql.Composable) -> sql.Composed:
    """The value's date as the window reads it, as text (YYYY-MM-DD, or YYYY-MM for a month)."""
    local = (sql.SQL("({} AT TIME ZONE {})").format(value, sql.Literal(w.timezone)) if w.kind == _TIMESTAMPTZ
             else sql.SQL("{}").format(value))
    return sql.SQL("to_char({}, {})").format(local, sql.Literal("YYYY-MM-DD" if w.grain == "day" else "YYYY-MM"))


def outside_reason(w: Window) -> sql.Composed:
    """The reject message of a record outside the window: names its date and the partition's."""
    where = f" ({w.timezone})" if w.kind == _TIMESTAMPTZ else ""
    return sql.SQL("{} || {} || {}").format(
        sql.Literal(f"{w.column} falls on " if w.grain == "day" else f"{w.column} falls in "),
        local_date(w, sql.Identifier(w.column)),
        sql.Literal(f"{where}, outside partition {w.label}: a run replaces only its own partition"))
