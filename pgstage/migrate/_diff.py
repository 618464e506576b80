"""The differences between a spec and its target, each decided once as (kind, detail).

Read-only: the catalog says what the table is; the spec (with its types resolved by
PostgreSQL) says what it should be. A change already started by an earlier `--apply` comes
from the ledger instead, with the detail it was started with, so a resumed apply finishes
what it began even though the catalog no longer shows the difference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage import declared_indexes
from pgstage.db import execute
from pgstage.names import DELETED_AT, ROW_HASH
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec
from pgstage.target import AUDIT_TYPES


@dataclass(frozen=True)
class Column:
    type: str
    not_null: bool
    indexed: bool         # in an index or a constraint: a copy-and-swap would lose it


def columns(conn: psycopg.Connection[Any], target: tuple[str, str]) -> dict[str, Column]:
    rows = execute(conn, sql.SQL(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,"
        " EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND a.attnum = ANY(i.indkey))"
        " OR EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = a.attrelid AND a.attnum = ANY(k.conkey)"
        "            AND k.conname NOT LIKE '\\_pgstage\\_not\\_null\\_%%')"
        " FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum"), (sql.Identifier(*target).as_string(),), label="migrate: columns").fetchall()
    return {name: Column(kind, bool(not_null), bool(indexed)) for name, kind, not_null, indexed in rows}


def estimated_rows(conn: psycopg.Connection[Any], target: tuple[str, str]) -> int:
    row = execute(conn, sql.SQL("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)"),
                  (sql.Identifier(*target).as_string(),), label="migrate: size").fetchone()
    return int(row[0]) if row else 0


_VARCHAR = re.compile(r"^character varying(?:\((\d+)\))?$")
_NUMERIC = re.compile(r"^numeric(?:\((\d+),(\d+)\))?$")
# Widenings that need a rewrite, so are copied and swapped (old -> allowed new types).
_BY_COPY = {
    "smallint": ("integer", "bigint", "numeric"),
    "integer": ("bigint", "numeric"),
    "bigint": ("numeric",),
    "real": ("double precision",),
}


def widening(old: str, new: str) -> str | None:
    """`in_place` (binary-coercible: no rewrite), `copy` (a rewrite), or None when it is not a widening."""
    if old == new:
        return None
    old_v, new_v = _VARCHAR.match(old), _VARCHAR.match(new)
    if old_v and (new == "text" or (new_v and (new_v[1] is None or (old_v[1] and int(new_v[1]) >= int(old_v[1]))))):
        return "in_place"
    old_n, new_n = _NUMERIC.match(old), _NUMERIC.match(new)
    if old_n and new_n:
        if new_n[1] is None:
            return "in_place"
        if old_n[1] is None:
            return None
        p, s, p2, s2 = int(old_n[1]), int(old_n[2]), int(new_n[1]), int(new_n[2])
        if s2 == s and p2 >= p:
            return "in_place"
        if s2 > s and p2 - s2 >= p - s:
            return "copy"
        return None
    base_new = "numeric" if new_n else new
    return "copy" if base_new in _BY_COPY.get(old, ()) else None


def intents(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType],
            found: dict[str, Column]) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """(kind, detail) of each difference, and the differences no migration handles (said, not done)."""
    wanted: list[tuple[str, dict[str, Any]]] = []
    refused: list[str] = []
    renamed_from = {c.renamed_from: name for name, c in spec.columns.items() if c.renamed_from}
    for name, kind in types.items():
        column = spec.columns[name]
        if name not in found:
            old = column.renamed_from
            if old and old in found:
                wanted.append(("rename_column", {"old": old, "new": name}))
                if found[old].type != kind.name:
                    refused.append(f"column {name!r} (was {old!r}) is {found[old].type}, the spec says {kind.name}:"
                                   " run migrate again after the rename")
                continue
            derive = "const" if column.const is not None else ("raw" if spec.load.raw_column
                                                               and spec.load.raw_column in found else None)
            wanted.append(("add_column", {"column": name, "type": kind.name, "required": column.required,
                                          "derive": derive}))
            continue
        have = found[name]
        if have.type != kind.name:
            how = widening(have.type, kind.name)
            if how is None:
                refused.append(f"column {name!r}: {have.type} -> {kind.name} is not a widening pgstage migrates"
                               " (it could lose values); change it by hand")
            elif how == "copy" and have.indexed:
                refused.append(f"column {name!r}: {have.type} -> {kind.name} needs a rewrite, and the column is in an"
                               " index or constraint that a copy-and-swap would lose; change it by hand")
            else:
                wanted.append(("widen_type", {"column": name, "old_type": have.type, "new_type": kind.name,
                                              "how": how, "not_null": have.not_null}))
        elif column.required and not have.not_null and name not in spec.pipeline.key:
            wanted.append(("set_not_null", {"column": name}))
    ours = {*types, *AUDIT_TYPES, ROW_HASH, DELETED_AT, *([spec.load.raw_column] if spec.load.raw_column else [])}
    for name, have in found.items():
        if name not in ours and name not in renamed_from and not name.startswith("_pgstage_"):
            wanted.append(("drop_column", {"column": name, "type": have.type}))
    for name in spec.indexes:
        state = declared_indexes.index_state(conn, spec.target, name)
        if state != "valid":
            wanted.append(("add_index", {"name": name, "invalid": state == "invalid"}))
    return wanted, refused
