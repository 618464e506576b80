"""The key's unique index dropped before a first load into an empty target, and made again after it.

A unique index is maintained row by row as rows are inserted: on a first load of 2M rows that
is about half of each `INSERT … SELECT`, and the merges are WAL-bound, so it is on the path the
run waits for. Built once after the load it is a sort (0.22 s for 1M rows). So, in the early
merges' mode only (pgstage/run/early_merge.py: at least two batches, the load drops its indexes
anyway, the target empty), the constraint of the key goes with the secondary indexes, when:

- it is an immediate PRIMARY KEY or UNIQUE constraint on exactly the key's plain columns, whose
  index bears its name, in the table's tablespace, neither clustered nor the replica identity;
- nothing depends on it (no foreign key refers to the target, no view relies on the key);
- the target is a plain table (not partitioned, not a partition).

Crash safety is that of the secondary indexes (pgstage/indexes.py): the stored definition goes
into `pgstage.index_rebuilds` in the transaction of the DROP and out in the transaction that makes
the constraint again, and every run's recovery (and `pgstage repair`) rebuilds what is left there.
While the key is missing, the early session holds `SHARE ROW EXCLUSIVE` on the target: readers go
on, every other writer waits, and the early session merges every batch of the run itself and
makes the key again before it commits.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults, target
from pgstage.db import execute
from pgstage.indexes import KEY_KINDS, key_definition
from pgstage.spec import Spec


def build_droppable() -> sql.Composed:
    """The key's constraint that may be dropped for a first load: (name, 'p'|'u', its index's definition), or no row.

    Parameters: schema, table, the key's column names sorted. Pure.
    """
    return sql.SQL(
        "SELECT k.conname, k.contype, pg_get_indexdef(k.conindid) FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_index i ON i.indexrelid = k.conindid JOIN pg_class ic ON ic.oid = k.conindid"
        " WHERE n.nspname = %s AND c.relname = %s AND c.relkind = 'r' AND NOT c.relispartition"
        " AND k.contype IN ('p', 'u') AND NOT k.condeferrable AND k.conparentid = 0 AND ic.relname = k.conname"
        " AND ic.reltablespace = c.reltablespace AND i.indisvalid AND i.indimmediate AND i.indpred IS NULL"
        " AND i.indexprs IS NULL AND NOT i.indisreplident AND NOT i.indisclustered"
        " AND (SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_attribute a"
        "      WHERE a.attrelid = c.oid AND a.attnum = ANY(k.conkey)) = %s"
        " AND cardinality(k.conkey) = i.indnkeyatts"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.contype = 'f'"
        "                 AND (f.confrelid = c.oid OR f.conindid = k.conindid))"
        " AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.deptype = 'n'"
        "                 AND ((d.classid = 'pg_constraint'::regclass AND d.refobjid = k.oid)"
        "                      OR (d.refclassid = 'pg_constraint'::regclass AND d.refobjid = k.oid)"
        "                      OR (d.refclassid = 'pg_class'::regclass AND d.refobjid = k.conindid)))"
        " ORDER BY k.contype, k.conname LIMIT 1").format()


def stored_definition(conn: psycopg.Connection[Any], spec: Spec, name: str, kind: str, index: str) -> str:
    """What `pgstage.index_rebuilds` keeps for the constraint: its index's definition, then the ALTER that
    makes the index the constraint again (see indexes.py, which checks this shape before running any of it)."""
    alter = sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}").format(
        sql.Identifier(*spec.target), sql.Identifier(name), sql.SQL(KEY_KINDS[kind]), sql.Identifier(name))
    return f"{index}; {alter.as_string(conn)}"


def drop_for_load(conn: psycopg.Connection[Any], spec: Spec, run_id: int) -> str | None:
    """Drop the key's constraint (and so its index) if it may go, its definition in the ledger in the same
    transaction; the constraint's name, or None when it stays (then the load goes as ever)."""
    schema, table = spec.target
    with conn.transaction():
        row = execute(conn, build_droppable(), (schema, table, sorted(target.unique_key(spec))),
                      label="key index: droppable?").fetchone()
        if row is None:
            return None
        name, kind, index = row
        definition = stored_definition(conn, spec, name, kind, index)
        if key_definition(definition, name, spec.target) is None:
            return None   # a rendering the rebuild would refuse (e.g. storage options): the key stays
        execute(conn, sql.SQL(
            "INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id) VALUES (%s, %s, %s, %s)"),
            (spec.pipeline.target, name, definition, run_id), label="key index: remember")
        execute(conn, sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            sql.Identifier(*spec.target), sql.Identifier(name)), label="key index: drop")
    faults.hit("key.dropped")   # killed here: the key is missing and the ledger says so
    return str(name)


def lock_writers(conn: psycopg.Connection[Any], spec: Spec) -> None:
    """In the caller's transaction: no other session may write the target until it ends; readers go on."""
    execute(conn, sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(*spec.target)),
            label="key index: lock out writers")
