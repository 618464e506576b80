"""Each kind of change as its safe sequence of steps, and its undo: pure builders, no I/O.

A change is decided once (`_diff.py`) as a kind and a small JSON detail; the steps are built
from that detail alone, so a crashed `--apply` rebuilds the very same steps from the ledger
(`pgstage.migrations.detail`) and resumes after the last one it recorded. Type names come from
PostgreSQL's own rendering (`format_type`, `to_regtype`) and are checked again against
`TYPE_NAME` before they are spliced, whoever wrote the ledger row.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from pgstage.declared_indexes import build_drop
from pgstage.errors import SpecError
from pgstage.pipeline.transform import TYPE_NAME

# What each statement locks, in the words the plan prints.
CATALOG = "ACCESS EXCLUSIVE, catalog only (no scan, no rewrite)"
ROWS = "ROW EXCLUSIVE, row locks on one batch at a time (reads and writes go on)"
SHARE_UPDATE = "SHARE UPDATE EXCLUSIVE (reads and writes go on)"
RESCAN = "ACCESS EXCLUSIVE, with a full scan or rewrite"
TRIGGER = "SHARE ROW EXCLUSIVE, catalog only (writes wait an instant)"

NEW_PREFIX = "_pgstage_new_"         # the widened copy of a column being rewritten
COPY_TRIGGER = "_pgstage_copy_"      # the trigger that keeps that copy in step with writers
NOT_NULL_CHECK = "_pgstage_not_null_"


@dataclass(frozen=True)
class Backfill:
    """A batched write: `batch(first, end)` updates the rows on heap pages first..end-1.

    The page bounds are literals, not parameters: a derived value's SQL may hold a `%`.
    """

    batch: Callable[[int, int], sql.Composed]
    source: str          # what the values come from, for the plan

    def shown(self) -> sql.Composed:
        return self.batch(0, 1000)


@dataclass(frozen=True)
class Step:
    """One statement (or one batched backfill) of a change."""

    what: str
    statement: sql.Composed | None
    lock: str
    rows: int = 0                        # estimated rows it touches (reads, for a scan)
    backfill: Backfill | None = None
    concurrent: bool = False             # outside a transaction block (CREATE INDEX CONCURRENTLY)
    index: str | None = None             # builds this index: an invalid one of that name is dropped first


@dataclass(frozen=True)
class Change:
    """One difference between the spec and the target, as the steps that remove it."""

    kind: str
    subject: str
    summary: str
    detail: dict[str, Any]
    steps: tuple[Step, ...]
    rollback: tuple[Step, ...] | None          # None: what it did cannot be undone
    note: str | None = None                    # said in the plan (why nothing is done, what undo costs)
    migration_id: int | None = None            # a change resumed from the ledger
    resumed_at: int = 0                        # steps already applied

    @property
    def actionable(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class Derivation:
    """What a new column's values are computed from, resolved by the caller from the spec."""

    expression: sql.Composable     # over the target row (its raw column), NULL when not derivable
    source: str


@dataclass(frozen=True)
class Target:
    schema: str
    table: str
    rows: int = 0

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)


def checked_type(name: object) -> sql.SQL:
    """A type name from a detail, spliced only when it is a plain type name."""
    if not isinstance(name, str) or not TYPE_NAME.match(name):
        raise SpecError(f"pgstage.migrations holds a type {name!r} that is not a type name; it was not run")
    return sql.SQL(name)


def _alter(target: Target, action: str, *parts: sql.Composable) -> sql.Composed:
    return sql.SQL("ALTER TABLE {} " + action).format(target.ident, *parts)


def not_null_steps(target: Target, column: str) -> tuple[Step, ...]:
    """NOT NULL without an exclusive lock held for a scan: a NOT VALID check, validated, then SET NOT NULL.

    SET NOT NULL skips its scan when a valid CHECK (col IS NOT NULL) proves it (PostgreSQL 12+).
    """
    col, check = sql.Identifier(column), sql.Identifier(f"{NOT_NULL_CHECK}{column}"[:63])
    return (
        Step("add the check, not validated", _alter(target, "ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID",
                                                    check, col), CATALOG),
        Step("validate the check", _alter(target, "VALIDATE CONSTRAINT {}", check), SHARE_UPDATE, target.rows),
        Step("set NOT NULL (proved by the check)", _alter(target, "ALTER COLUMN {} SET NOT NULL", col), CATALOG),
        Step("drop the check", _alter(target, "DROP CONSTRAINT IF EXISTS {}", check), CATALOG),
    )


def pages(first: int, end: int) -> sql.Composed:
    """`ctid >= '(first,0)' AND ctid < '(end,0)'`: a TID range scan reads only those pages."""
    return sql.SQL("ctid >= {}::tid AND ctid < {}::tid").format(sql.Literal(f"({first},0)"), sql.Literal(f"({end},0)"))


def backfill(target: Target, column: str, value: sql.Composable) -> Callable[[int, int], sql.Composed]:
    """One batch of a backfill: the rows of a page range whose new column is still NULL (pure)."""
    col = sql.Identifier(column)

    def batch(first: int, end: int) -> sql.Composed:
        return sql.SQL("UPDATE {t} SET {c} = {v} WHERE {pages} AND {c} IS NULL AND {v} IS NOT NULL").format(
            t=target.ident, c=col, v=value, pages=pages(first, end))
    return batch


def copy_values(target: Target, column: str, into: str) -> Callable[[int, int], sql.Composed]:
    """One batch of a widening copy: the rows of a page range whose copy differs (pure)."""
    col, new = sql.Identifier(column), sql.Identifier(into)

    def batch(first: int, end: int) -> sql.Composed:
        return sql.SQL("UPDATE {t} SET {n} = {c} WHERE {pages} AND {n} IS DISTINCT FROM {c}").format(
            t=target.ident, n=new, c=col, pages=pages(first, end))
    return batch


def add_column(target: Target, detail: Mapping[str, Any], derivation: Derivation | None) -> Change:
    column, kind = str(detail["column"]), checked_type(detail["type"])
    steps = [Step("add the column, nullable", _alter(target, "ADD COLUMN IF NOT EXISTS {} {}",
                                                     sql.Identifier(column), kind), CATALOG)]
    if derivation is not None:
        steps.append(Step(f"backfill from {derivation.source}", None, ROWS, target.rows,
                          Backfill(backfill(target, column, derivation.expression), derivation.source)))
    if detail.get("required"):
        steps += not_null_steps(target, column)
    drop = Step("drop the column", _alter(target, "DROP COLUMN IF EXISTS {}", sql.Identifier(column)), CATALOG)
    note = None if derivation or not detail.get("required") else (
        "required but not derivable (no raw_column, no const): existing rows stay NULL and validation will fail")
    return Change("add_column", column, f"new column {column!r} {detail['type']}"
                  + (" (required)" if detail.get("required") else ""), dict(detail), tuple(steps), (drop,), note)


def set_not_null(target: Target, detail: Mapping[str, Any]) -> Change:
    column = str(detail["column"])
    undo = Step("drop NOT NULL", _alter(target, "ALTER COLUMN {} DROP NOT NULL", sql.Identifier(column)), CATALOG)
    return Change("set_not_null", column, f"column {column!r} becomes required", dict(detail),
                  not_null_steps(target, column), (undo,))


def rename_column(target: Target, detail: Mapping[str, Any]) -> Change:
    old, new = str(detail["old"]), str(detail["new"])
    step = Step(f"rename {old!r} to {new!r}", _alter(target, "RENAME COLUMN {} TO {}", sql.Identifier(old),
                                                     sql.Identifier(new)), CATALOG)
    undo = Step(f"rename {new!r} back to {old!r}", _alter(target, "RENAME COLUMN {} TO {}", sql.Identifier(new),
                                                          sql.Identifier(old)), CATALOG)
    return Change("rename_column", new, f"column {old!r} renamed to {new!r}", dict(detail), (step,), (undo,))


def widen_in_place(target: Target, detail: Mapping[str, Any]) -> Change:
    """A binary-coercible change: PostgreSQL rewrites nothing and scans nothing."""
    column = str(detail["column"])
    step = Step("change the type in place", _alter(target, "ALTER COLUMN {} TYPE {}", sql.Identifier(column),
                                                   checked_type(detail["new_type"])), CATALOG)
    undo = Step("narrow the type back", _alter(target, "ALTER COLUMN {} TYPE {}", sql.Identifier(column),
                                               checked_type(detail["old_type"])), RESCAN, target.rows)
    return Change("widen_type", column, f"column {column!r} {detail['old_type']} -> {detail['new_type']} (no rewrite)",
                  dict(detail), (step,), (undo,), "undoing it checks every row under an exclusive lock")


def widen_by_copy(target: Target, detail: Mapping[str, Any]) -> Change:
    """A change that would rewrite the table: a new column kept in step by a trigger, copied in
    batches, then swapped in under one short transaction (the last step, a list of catalog changes)."""
    column = str(detail["column"])
    col, new = sql.Identifier(column), sql.Identifier(f"{NEW_PREFIX}{column}"[:63])
    trigger = sql.Identifier(f"{COPY_TRIGGER}{column}"[:63])
    kind = checked_type(detail["new_type"])
    steps = [
        Step("add the widened copy, nullable", _alter(target, "ADD COLUMN IF NOT EXISTS {} {}", new, kind), CATALOG),
        Step("keep the copy in step with writers (trigger)", sql.SQL(
            "CREATE OR REPLACE TRIGGER {} BEFORE INSERT OR UPDATE ON {} FOR EACH ROW"
            " EXECUTE FUNCTION pgstage.copy_column({}, {})").format(
                trigger, target.ident, sql.Literal(column), sql.Literal(f"{NEW_PREFIX}{column}"[:63])), TRIGGER),
        Step("copy the values", None, ROWS, target.rows,
             Backfill(copy_values(target, column, f"{NEW_PREFIX}{column}"[:63]), f"column {column!r}")),
    ]
    if detail.get("not_null"):
        steps += [s for s in not_null_steps(target, f"{NEW_PREFIX}{column}"[:63]) if "drop" not in s.what]
    swap = sql.SQL("; ").join([
        sql.SQL("DROP TRIGGER IF EXISTS {} ON {}").format(trigger, target.ident),
        _alter(target, "DROP COLUMN {}", col),
        _alter(target, "RENAME COLUMN {} TO {}", new, col),
        *([_alter(target, "DROP CONSTRAINT IF EXISTS {}", sql.Identifier(f"{NOT_NULL_CHECK}{NEW_PREFIX}{column}"[:63]))]
          if detail.get("not_null") else []),
    ])
    steps.append(Step("swap the copy in, in one short transaction", swap, CATALOG))
    return Change("widen_type", column, f"column {column!r} {detail['old_type']} -> {detail['new_type']} (copy and swap)",
                  dict(detail), tuple(steps), None, "cannot be undone: the swap drops the old column")


def add_index(target: Target, detail: Mapping[str, Any], create: sql.Composed | None) -> Change:
    """`create`: None when the spec no longer declares the index (only its undo is left)."""
    name = str(detail["name"])
    steps = []
    if create is None:
        pass
    elif detail.get("invalid"):
        steps.append(Step("drop the invalid index a crashed build left", build_drop(target.schema, name,
                                                                                     concurrently=True),
                          SHARE_UPDATE, concurrent=True))
    if create is not None:
        steps.append(Step("build the index concurrently", create, SHARE_UPDATE, target.rows, concurrent=True,
                          index=name))
    undo = Step("drop the index", build_drop(target.schema, name, concurrently=True), SHARE_UPDATE, concurrent=True)
    what = "rebuild invalid index" if detail.get("invalid") else "new index"
    return Change("add_index", name, f"{what} {name!r}", dict(detail), tuple(steps), (undo,))


def drop_column(target: Target, detail: Mapping[str, Any], *, drop: bool) -> Change:
    column = str(detail["column"])
    if not drop:
        return Change("removed_column", column, f"column {column!r} is no longer in the spec", dict(detail), (), None,
                      "kept: pgstage never drops a column unless asked (--drop-removed)")
    step = Step("drop the column", _alter(target, "DROP COLUMN IF EXISTS {}", sql.Identifier(column)), CATALOG)
    return Change("drop_column", column, f"column {column!r} is no longer in the spec: dropped", dict(detail),
                  (step,), None, "cannot be undone: the values are gone")


# A generic trigger function: copies one column of the row into another, named by the trigger's
# arguments, so no per-column function body is ever composed from names.
COPY_COLUMN_FUNCTION = sql.SQL(
    "CREATE OR REPLACE FUNCTION pgstage.copy_column() RETURNS trigger LANGUAGE plpgsql AS $$"
    " BEGIN NEW := jsonb_populate_record(NEW, jsonb_build_object(TG_ARGV[1], to_jsonb(NEW) -> TG_ARGV[0]));"
    " RETURN NEW; END $$")
