"""`pgstage migrate --plan`: the safe sequence of steps that brings a target to its spec.

Read-only. Each difference (`_diff.py`) becomes a `Change` of steps (`_steps.py`); changes
an earlier `--apply` left unfinished come first, rebuilt from the ledger, with the steps
already done marked so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage import declared_indexes
from pgstage.db import relation_exists
from pgstage.errors import TargetMismatch
from pgstage.migrate import _diff, _ledger, _steps
from pgstage.migrate._steps import Change, Derivation, Target
from pgstage.pipeline import transform
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec


@dataclass(frozen=True)
class MigrationPlan:
    target: str
    rows: int                                  # the target's estimated row count
    changes: tuple[Change, ...]
    refused: tuple[str, ...]                   # differences left to a person, with why

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "estimated_rows": self.rows, "refused": list(self.refused),
                "changes": [change_dict(c) for c in self.changes]}


def change_dict(change: Change) -> dict[str, Any]:
    def step(s: _steps.Step, done: bool) -> dict[str, Any]:
        shown = s.backfill.shown() if s.backfill else s.statement
        return {"what": s.what, "sql": shown.as_string() if shown is not None else None, "lock": s.lock,
                "estimated_rows": s.rows, "batched": s.backfill is not None, "done": done}

    return {"kind": change.kind, "subject": change.subject, "summary": change.summary, "note": change.note,
            "resumes_migration": change.migration_id,
            "steps": [step(s, i < change.resumed_at) for i, s in enumerate(change.steps)],
            "rollback": None if change.rollback is None else [step(s, False) for s in change.rollback]}


def build_plan(conn: psycopg.Connection[Any], spec: Spec, *, drop_removed: bool = False) -> MigrationPlan:
    """Compare the spec with its target and plan every change; refuses a missing target."""
    types = transform.resolve_types(conn, spec)
    found = _diff.columns(conn, spec.target)
    if not found:
        raise TargetMismatch(f"target {spec.pipeline.target} does not exist: there is nothing to migrate",
                             hint="`pgstage run` creates it from the spec, with its declared indexes")
    target = Target(*spec.target, rows=_diff.estimated_rows(conn, spec.target))
    changes: list[Change] = []
    resumed = set()
    if relation_exists(conn, "pgstage", "migrations"):
        for row in _ledger.running(conn, spec.pipeline.target):
            change = build_change(spec, types, target, row["kind"], row["detail"], drop_removed=True)
            if change is not None:
                changes.append(Change(**{**change.__dict__, "migration_id": row["migration_id"],
                                         "resumed_at": row["steps_done"]}))
                resumed.add((row["kind"], row["subject"]))
    wanted, refused = _diff.intents(conn, spec, types, found)
    for kind, detail in wanted:
        change = build_change(spec, types, target, kind, detail, drop_removed=drop_removed)
        if change is not None and (change.kind, change.subject) not in resumed:
            changes.append(change)
    return MigrationPlan(spec.pipeline.target, target.rows, tuple(changes), tuple(refused))


def derivation(spec: Spec, types: dict[str, ColumnType], column: str, derive: str | None) -> Derivation | None:
    """A new column's values: its `const`, or its field of each row's kept raw record through the
    spec's transforms (NULL where the record has no valid value, as validation would reject it)."""
    spec_column, kind = spec.columns.get(column), types.get(column)
    if spec_column is None or kind is None or derive is None:
        return None
    if derive == "const":
        return Derivation(transform.const(spec_column, kind), f"const {spec_column.const!r}")
    if spec.load.raw_column is None or spec_column.from_ is None:
        return None
    field = sql.SQL("({} ->> {})").format(sql.Identifier(spec.load.raw_column), sql.Literal(spec_column.from_))
    return Derivation(transform.typed(field, spec_column, kind, spec.source.null),
                      f"field {spec_column.from_!r} of raw column {spec.load.raw_column!r}")


def build_change(spec: Spec, types: dict[str, ColumnType], target: Target, kind: str, detail: dict[str, Any],
                 *, drop_removed: bool) -> Change | None:
    """The steps of one change, from its kind and detail alone (also those the ledger holds)."""
    if kind == "add_column":
        return _steps.add_column(target, detail, derivation(spec, types, str(detail["column"]), detail.get("derive")))
    if kind == "set_not_null":
        return _steps.set_not_null(target, detail)
    if kind == "rename_column":
        return _steps.rename_column(target, detail)
    if kind == "widen_type":
        return (_steps.widen_in_place if detail.get("how") == "in_place" else _steps.widen_by_copy)(target, detail)
    if kind == "add_index":
        name = str(detail["name"])
        creates = dict(declared_indexes.creates(spec, {n: t.name for n, t in types.items()}, concurrently=True))
        return _steps.add_index(target, detail, creates.get(name))
    if kind in ("drop_column", "removed_column"):
        return _steps.drop_column(target, detail, drop=drop_removed)
    return None
