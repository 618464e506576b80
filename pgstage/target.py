"""The target table: created from the spec when missing, checked against it when present.

Audit columns (SPEC §3): `_loaded_at` first load, `_updated_at` last change, `_run_id` the
run that last changed the row, `_row_hash` a hash of the source record that produced it
(see `pipeline/known.py`: a reload of the same bytes skips their validation); `_deleted_at`
when a postgres source marks soft deletes. Change detection itself compares typed values.
A `_row_hash` of another type (older pgstage versions kept a uuid) is left alone, unused.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgstage import declared_indexes, indexes
from pgstage.db import execute
from pgstage.errors import Location, TargetMismatch
from pgstage.names import DELETED_AT, LOADED_AT, ROW_HASH, RUN_ID, UPDATED_AT
from pgstage.pipeline.merge import surrogate
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

AUDIT_TYPES = {
    LOADED_AT: "timestamp with time zone",
    UPDATED_AT: "timestamp with time zone",
    RUN_ID: "bigint",
}
_AUDIT_DEFAULTS = {LOADED_AT: "now()", UPDATED_AT: "now()"}


def audit_columns(spec: Spec, found: dict[str, str] | None = None) -> dict[str, str]:
    """The audit columns of this spec's target: `_deleted_at` too when soft deletes are marked.

    `found`: the existing target's columns; a `_row_hash` there of another type is not ours.
    """
    marks = spec.source.kind == "postgres" and spec.source.deleted_at and spec.source.on_delete == "mark"
    hashed = {ROW_HASH: "bigint"} if keeps_row_hash(found) else {}
    return {**AUDIT_TYPES, **hashed, **({DELETED_AT: "timestamp with time zone"} if marks else {})}


def keeps_row_hash(found: dict[str, str] | None) -> bool:
    """Whether the target has (or will get) pgstage's `_row_hash bigint`."""
    return found is None or found.get(ROW_HASH, "bigint") == "bigint"


def ident(spec: Spec) -> sql.Identifier:
    return sql.Identifier(*spec.target)


def existing_columns(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, str] | None:
    """Column name → type of the target, or None when there is no such table."""
    schema, table = spec.target
    rows = execute(conn, sql.SQL(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
        " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"),
        (schema, table), label="target: columns").fetchall()
    return {name: kind for name, kind in rows} if rows else None


def _key_index(conn: psycopg.Connection[Any], spec: Spec, *, for_upsert: bool = False) -> bool:
    """Whether a unique, non-partial index on exactly the key columns exists.

    `for_upsert`: one that `INSERT … ON CONFLICT (key)` can use as its arbiter, which must
    also be valid, immediate (not deferrable) and on plain columns.
    """
    schema, table = spec.target
    usable = sql.SQL(" AND i.indimmediate AND i.indisvalid AND i.indexprs IS NULL" if for_upsert else "")
    row = execute(conn, sql.SQL(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisunique AND i.indpred IS NULL{}"
        " AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
        "      WHERE a.attrelid = c.oid AND a.attnum = ANY(i.indkey)) = %s)").format(usable),
        (schema, table, sorted(unique_key(spec))), label="target: key").fetchone()
    return bool(row and row[0])


def _key_or_owed(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    """The key's unique index is there, or pgstage dropped it for a first load and the ledger owes it back (the
    run's recovery makes it again). A load may be putting it back meanwhile, in one commit with the ledger's row:
    read before and after the ledger, it is seen in one of the three reads unless the whole drop and rebuild of
    another load fall between them."""
    return _key_index(conn, spec) or indexes.key_pending(conn, spec) or _key_index(conn, spec)


def _partitioned_by(conn: psycopg.Connection[Any], spec: Spec, column: str) -> bool:
    """Whether the target is declaratively partitioned by range on exactly `column`."""
    schema, table = spec.target
    row = execute(conn, sql.SQL(
        "SELECT p.partstrat = 'r' AND p.partnatts = 1 AND a.attname = %s FROM pg_partitioned_table p"
        " JOIN pg_class c ON c.oid = p.partrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]"
        " WHERE n.nspname = %s AND c.relname = %s"), (column, schema, table), label="target: partitioned?").fetchone()
    return bool(row and row[0])


def unique_key(spec: Spec) -> tuple[str, ...]:
    """The columns of the target's primary key: the key, plus the partition column of a native partitioned
    target (PostgreSQL's unique indexes on a partitioned table must contain the partition column)."""
    part = spec.pipeline.partition
    if part is not None and part.native and spec.pipeline.key and part.column not in spec.pipeline.key:
        return (*spec.pipeline.key, part.column)
    return spec.pipeline.key


def upsert_arbiter(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    """Whether `INSERT … ON CONFLICT (key)` can use a unique index of the target's."""
    return _key_index(conn, spec, for_upsert=True)


def check(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType]) -> bool:
    """Compare an existing target with the spec; explain every mismatch. False when it does not exist yet."""
    found = existing_columns(conn, spec)
    if found is None:
        return False
    problems = []
    for name, kind in types.items():
        if name not in found:
            problems.append(f"column {name!r} is missing (spec type {kind.name})")
        elif found[name] != kind.name:
            problems.append(f"column {name!r}: spec says {kind.name}, table has {found[name]}")
    part = spec.pipeline.partition
    if part is not None and part.native and not _partitioned_by(conn, spec, part.column):
        problems.append(f"partition.native is set but the table is not PARTITION BY RANGE ({part.column})")
    sk = surrogate.column(spec)
    if sk and found.get(sk) != "uuid":
        problems.append(f"surrogate key column {sk!r} is " + (f"{found[sk]}, expected uuid" if sk in found else "missing"))
    raw = spec.load.raw_column
    if raw and raw in found and found[raw] != "jsonb":
        problems.append(f"raw column {raw!r} is {found[raw]}, expected jsonb")
    for name, kind_name in audit_columns(spec, found).items():
        if name in found and found[name] != kind_name:
            problems.append(f"audit column {name!r} is {found[name]}, expected {kind_name}")
    if spec.pipeline.strategy == "scd2":   # many versions per key: the key is unique among current rows only
        from pgstage.pipeline.merge import scd2   # (a strategy's module only for its own targets)

        problems += [f"scd2 column {name!r} is " + (f"{found[name]}, expected {kind}" if name in found else "missing")
                     for name, kind in scd2.columns(spec).items() if found.get(name) != kind]
    elif spec.pipeline.strategy == "append":
        from pgstage.pipeline.merge import append

        problems += [f"append column {name!r} is " + (f"{found[name]}, expected {kind}" if name in found else "missing")
                     for name, kind in append.COLUMNS.items() if found.get(name) != kind]
    elif not problems and spec.pipeline.key and not _key_or_owed(conn, spec):
        problems.append(f"no primary key or unique index on the key ({', '.join(unique_key(spec))})")
    if problems:
        raise TargetMismatch(f"target {spec.pipeline.target} does not match the spec: " + "; ".join(problems),
                             location=Location(file=str(spec.path) if spec.path else None),
                             hint="alter the table or the spec so they agree; pgstage never alters your columns")
    return True


def ensure(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType]) -> None:
    """Create the target (and its schema) if missing; add absent audit columns to an existing one.

    Runs inside the caller's transaction, serialized per target: two partitions of a pipeline
    loading at once would otherwise race to create the same schema and table.
    """
    target = ident(spec)
    execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"),
            (f"pgstage:target:{spec.pipeline.target}",), label="target: lock")
    if check(conn, spec, types):
        found = existing_columns(conn, spec) or {}
        extra = {**audit_columns(spec, found), **({spec.load.raw_column: "jsonb"} if spec.load.raw_column else {})}
        for name, kind in extra.items():
            if name not in found:
                execute(conn, sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    target, sql.Identifier(name), sql.SQL(kind)), label="target: audit column")
        return
    schema, _ = spec.target
    execute(conn, sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)), label="target: schema")
    keys = set(spec.pipeline.key)
    columns: list[sql.Composable] = [sql.SQL("{} {}{}").format(sql.Identifier(n), t.cast, sql.SQL(" NOT NULL") if n in keys else sql.SQL(""))
               for n, t in types.items()]
    if spec.load.raw_column:
        columns.append(sql.SQL("{} jsonb").format(sql.Identifier(spec.load.raw_column)))
    columns += [sql.SQL("{} {}{}").format(sql.Identifier(n), sql.SQL(k),
                                          sql.SQL(f" NOT NULL DEFAULT {_AUDIT_DEFAULTS[n]}") if n in _AUDIT_DEFAULTS else sql.SQL(""))
                for n, k in audit_columns(spec).items()]
    sk = surrogate.ddl(spec)
    if sk is not None:   # the surrogate is the primary key; the business key stays unique
        columns.insert(0, sk)
    history = spec.pipeline.strategy == "scd2"
    from pgstage.pipeline.merge import append, scd2

    if history:
        columns += scd2.ddl(spec)
        execute(conn, sql.SQL("CREATE EXTENSION IF NOT EXISTS btree_gist"), label="target: btree_gist")
    elif spec.pipeline.strategy == "append":
        columns += append.ddl(spec)
    elif spec.pipeline.key:   # replace_partition may go without one
        columns.append(sql.SQL("{} ({})").format(sql.SQL("UNIQUE" if sk is not None else "PRIMARY KEY"),
                                                 sql.SQL(", ").join(sql.Identifier(k) for k in unique_key(spec))))
    part = spec.pipeline.partition
    native = (sql.SQL(" PARTITION BY RANGE ({})").format(sql.Identifier(part.column)) if part and part.native
              else sql.SQL(""))
    execute(conn, sql.SQL("CREATE TABLE {} ({}){}").format(target, sql.SQL(", ").join(columns), native),
            label="target: create")
    if history:
        execute(conn, scd2.build_current_index(spec), label="target: one current row per key")
    for name, statement in declared_indexes.creates(spec, {n: t.name for n, t in types.items()}):
        execute(conn, statement, label=f"target: index {name}")
