"""Crash-safe drop and rebuild of a target's secondary indexes around a large merge.

Writing a row into a heap with N indexes costs N index insertions; building an index once
after the load is a sort, far cheaper for large loads. The danger is a crash between the
drop and the rebuild, leaving the table without its indexes. So each definition is written
to `pgstage.index_rebuilds` in the same transaction as its DROP, and removed in the same
transaction as its CREATE: whatever instant the process dies, the ledger names exactly the
indexes to rebuild, and the next run on the target (or `pgstage repair`) rebuilds them.

A backfill drops them once for all its days (pgstage/backfill/held.py): their rows carry its
id, and while any process of that backfill is alive (it holds the backfill's advisory lock,
shared) nobody else rebuilds them; its processes rebuild them when no unit is left. Once
every process of it is gone, the next run or `pgstage repair` rebuilds them as above.

Whoever can write `pgstage.index_rebuilds` must not get SQL run by the next load. So only
indexes on plain columns are dropped (an expression or a predicate calls functions; such an
index is kept and maintained by the merge), and a stored definition is run only if it still
has exactly that shape, for that index of that target: nothing in it can call a function.

The key's own unique index may go too, around a first load into an empty target
(pgstage/key_index.py). Its row holds two statements, `CREATE UNIQUE INDEX …; ALTER TABLE …
ADD CONSTRAINT … PRIMARY KEY|UNIQUE USING INDEX …`, both checked to that shape and to that
index, constraint and target; the first is run as stored, the second is composed here anew.
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults
from pgstage.db import execute, qualified, relation_exists
from pgstage.errors import Location, UntrustedIndexDefinition
from pgstage.spec import Spec

AUTO_MIN_ROWS = 50_000
AUTO_FRACTION = 4.0        # incoming rows per existing row


# The shape of pg_get_indexdef's rendering of a non-unique index on plain columns: names
# (quoted when needed), optional collation and operator class names, orderings. No
# parenthesis inside the key list, so no expression, and no WHERE, so no predicate.
_IDENT = r'(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")'
_QUALIFIED = rf"{_IDENT}(?:\.{_IDENT})?"
_KEY = rf"{_IDENT}(?: COLLATE {_QUALIFIED})?(?: {_QUALIFIED})?(?: DESC)?(?: NULLS (?:FIRST|LAST))?"
_PLAIN_INDEX = re.compile(
    rf"CREATE INDEX (?P<name>{_IDENT}) ON (?:ONLY )?(?P<schema>{_IDENT})\.(?P<table>{_IDENT})"
    rf" USING (?:btree|hash|gist|spgist|gin|brin) \({_KEY}(?:, {_KEY})*\)(?: INCLUDE \({_IDENT}(?:, {_IDENT})*\))?")


# The key's constraint as pgstage stores it: PostgreSQL's rendering of its unique index on plain
# columns (btree, the only method a constraint uses; INCLUDE and NULLS NOT DISTINCT as rendered),
# then the statement that turns that index back into the constraint, names quoted by psycopg.
_KEY_INDEX = re.compile(
    rf"CREATE UNIQUE INDEX (?P<name>{_IDENT}) ON (?:ONLY )?(?P<schema>{_IDENT})\.(?P<table>{_IDENT})"
    rf" USING btree \({_KEY}(?:, {_KEY})*\)(?: INCLUDE \({_IDENT}(?:, {_IDENT})*\))?(?: NULLS NOT DISTINCT)?"
    rf"; ALTER TABLE (?P<schema2>{_IDENT})\.(?P<table2>{_IDENT}) ADD CONSTRAINT (?P<constraint>{_IDENT})"
    rf" (?P<kind>PRIMARY KEY|UNIQUE) USING INDEX (?P<name2>{_IDENT})")
KEY_KINDS = {"p": "PRIMARY KEY", "u": "UNIQUE"}


def _unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


def plain_definition(definition: str, name: str, target: tuple[str, str]) -> bool:
    """Whether `definition` creates index `name` on `target` from plain columns only (pure)."""
    found = _PLAIN_INDEX.fullmatch(definition)
    return bool(found and _unquote(found["name"]) == name
                and (_unquote(found["schema"]), _unquote(found["table"])) == target)


def key_definition(definition: str, name: str, target: tuple[str, str]) -> tuple[str, str] | None:
    """(CREATE UNIQUE INDEX statement, PRIMARY KEY|UNIQUE) when `definition` is exactly the stored form of the key's
    constraint `name` on `target`, whose index bears the same name (pure); None otherwise."""
    found = _KEY_INDEX.fullmatch(definition)
    if not found or {_unquote(found[g]) for g in ("name", "name2", "constraint")} != {name}:
        return None
    if {(_unquote(found[s]), _unquote(found[t])) for s, t in (("schema", "table"), ("schema2", "table2"))} != {target}:
        return None
    return definition.split("; ALTER TABLE ", 1)[0], found["kind"]


def secondary_indexes(conn: psycopg.Connection[Any], spec: Spec) -> list[tuple[str, str]]:
    """(name, CREATE INDEX statement) of the target's valid, non-unique, non-constraint indexes.

    Read under the table's weakest lock: `pg_get_indexdef` looks the index up afresh, and an index
    another session drops between the catalog scan and that lookup fails the statement ("cache
    lookup failed", about one call in ten under a steady drop and create). DROP INDEX waits for
    the lock, so the list is read whole; a DROP already under way is waited for (`lock_timeout`).
    """
    schema, table = spec.target
    with conn.transaction():
        execute(conn, sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE").format(sql.Identifier(schema, table)),
                label="indexes: hold the list still")
        rows = _list(conn, schema, table)
    return [(name, definition) for name, definition in rows]


def _list(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[Any, ...]]:
    return execute(conn, sql.SQL(
        "SELECT ic.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
        " JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_class ic ON ic.oid = i.indexrelid"
        " WHERE n.nspname = %s AND c.relname = %s AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) ORDER BY 1"),
        (schema, table), label="indexes: list").fetchall()


def key_pending(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    """Whether the ledger owes the target its key's constraint (dropped for a first load, pgstage/key_index.py)."""
    row = execute(conn, sql.SQL(
        "SELECT to_regclass('pgstage.index_rebuilds') IS NOT NULL"), label="indexes: ledger there?").fetchone()
    if not (row and row[0]):
        return False
    rows = execute(conn, sql.SQL("SELECT index_name, definition FROM pgstage.index_rebuilds WHERE target = %s"),
                   (spec.pipeline.target,), label="indexes: key pending?").fetchall()
    return any(key_definition(definition, name, spec.target) for name, definition in rows)


def should_rebuild(conn: psycopg.Connection[Any], spec: Spec, incoming_rows: int) -> bool:
    """`rebuild` always; `auto` when the load is large in itself and dwarfs the target.

    Before the merge nobody knows how many incoming rows will be written: a reload of a file
    of the target's size may change every row or none. Dropping indexes pays off only when the
    new rows dominate the rebuilt index, so `auto` waits for a load four times the target's size
    (an empty target always qualifies).
    """
    strategy = spec.load.index_strategy
    if strategy == "keep" or incoming_rows == 0:
        return False
    if strategy == "rebuild":
        return True
    row = execute(conn, sql.SQL("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)"),
                  (qualified(*spec.target),), label="indexes: size").fetchone()
    existing = int(row[0]) if row else 0
    return incoming_rows >= AUTO_MIN_ROWS and incoming_rows >= AUTO_FRACTION * existing


def build_backfill_key(backfill_id: sql.Composable) -> sql.Composed:
    """The advisory lock key of a live backfill: its processes hold it shared, a rebuild tries it exclusive."""
    return sql.SQL("hashtextextended('pgstage:backfill-live:' || {}::text, 0)").format(backfill_id)


def build_pending() -> sql.Composed:
    """The target's indexes to rebuild, but those held by another backfill that is still alive.

    Trying the backfill's lock exclusively fails while any of its processes holds it shared; the
    try's lock ends with the statement (autocommit): the rebuild's own transaction tries again.
    """
    return sql.SQL(
        "SELECT index_name, definition, backfill_id FROM pgstage.index_rebuilds WHERE target = %(target)s"
        " AND (backfill_id IS NULL OR backfill_id = %(own)s OR pg_try_advisory_xact_lock({key}))"
        " ORDER BY index_name").format(key=build_backfill_key(sql.Identifier("backfill_id")))


def drop_for_load(conn: psycopg.Connection[Any], spec: Spec, run_id: int | None, *,
                  backfill_id: int | None = None) -> list[str]:
    """Drop the secondary indexes, each after its definition is safely in the ledger.

    `backfill_id`: dropped for a whole backfill (no run yet), rebuilt when it ends.
    """
    schema, _ = spec.target
    dropped = []
    for name, definition in secondary_indexes(conn, spec):
        if not plain_definition(definition, name, spec.target):
            continue   # an expression or a predicate: kept, see the module's docstring
        with conn.transaction():
            remembered = execute(conn, sql.SQL(
                "INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id, backfill_id)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (target, index_name) DO NOTHING"),
                (spec.pipeline.target, name, definition, run_id, backfill_id), label="indexes: remember").rowcount
            if not remembered:
                # Another session dropped it since the list was read (this INSERT waited for that one's
                # row to commit): that load owns the row and rebuilds it; a second DROP would fail.
                continue
            execute(conn, sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)), label="indexes: drop")
        dropped.append(name)
    return dropped


def rebuild(conn: psycopg.Connection[Any], spec: Spec, *, backfill_id: int | None = None,
            keys_only: bool = False) -> list[str]:
    """Recreate every index the ledger says is missing on the target; safe to call at any time, from any session.

    Indexes a live backfill holds are left to it, unless `backfill_id` is that backfill (its end).
    `keys_only`: the key's constraint only (pgstage/key_index.py), before merges that need it.
    Inside a transaction each index is a savepoint, and the caller's commit makes it last.
    """
    rows = execute(conn, build_pending(), {"target": spec.pipeline.target, "own": backfill_id},
                   label="indexes: pending").fetchall()
    schema, _ = spec.target
    rebuilt = []
    for name, definition, held_by in rows:
        key = key_definition(definition, name, spec.target)
        if key is None and keys_only:
            continue
        if key is None and not plain_definition(definition, name, spec.target):
            raise UntrustedIndexDefinition(
                f"pgstage.index_rebuilds holds a definition for index {name!r} of {spec.pipeline.target} that pgstage"
                f" did not write, so it was not run: {definition!r}",
                location=Location(file=str(spec.path) if spec.path else None),
                hint="pgstage only drops indexes on plain columns and the key's own constraint; recreate the index yourself if it is wanted, then"
                     f" delete the row: DELETE FROM pgstage.index_rebuilds WHERE target = '{spec.pipeline.target}'"
                     f" AND index_name = '{name}'")
        with conn.transaction():
            if held_by is not None and held_by != backfill_id and not _dead(conn, held_by):
                continue   # its backfill came back to life since the list was read
            # Two sessions may rebuild at once (a backfill's processes ending together, a run beside it):
            # the row, locked, says whether the other one did it meanwhile.
            if execute(conn, sql.SQL("SELECT 1 FROM pgstage.index_rebuilds WHERE target = %s AND index_name = %s"
                                     " FOR UPDATE"), (spec.pipeline.target, name),
                       label="indexes: claim").fetchone() is None:
                continue
            execute(conn, sql.SQL("SET LOCAL maintenance_work_mem = {}").format(
                sql.Literal(spec.load.maintenance_work_mem.replace(" ", ""))), label="indexes: memory")
            if not relation_exists(conn, schema, name):
                # PostgreSQL's own rendering from pg_get_indexdef, checked above to hold names only.
                create = definition if key is None else key[0]
                execute(conn, sql.SQL(create), label=f"indexes: rebuild {name}")  # type: ignore[arg-type]
            if key is not None:
                _constrain(conn, spec, name, key[1])
            faults.hit("index.rebuild")
            execute(conn, sql.SQL("DELETE FROM pgstage.index_rebuilds WHERE target = %s AND index_name = %s"),
                    (spec.pipeline.target, name), label="indexes: done")
        rebuilt.append(name)
    return rebuilt


def _dead(conn: psycopg.Connection[Any], backfill_id: int) -> bool:
    """Inside the rebuild's transaction: no process of that backfill holds its lock, and none can take it until
    the transaction ends (so the index is not rebuilt under a backfill that has just come back)."""
    row = execute(conn, sql.SQL("SELECT pg_try_advisory_xact_lock({})").format(build_backfill_key(sql.Placeholder())),
                  (backfill_id,), label="indexes: backfill gone?").fetchone()
    return bool(row and row[0])


def _constrain(conn: psycopg.Connection[Any], spec: Spec, name: str, kind: str) -> None:
    """The key's rebuilt unique index made its constraint again (ACCESS EXCLUSIVE, for a catalog update only)."""
    if execute(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(%s)"
                             " AND conname = %s)"), (qualified(*spec.target), name),
               label="indexes: constraint there?").fetchone() == (True,):
        return
    execute(conn, sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {} USING INDEX {}").format(
        sql.Identifier(*spec.target), sql.Identifier(name),
        sql.SQL("PRIMARY KEY") if kind == "PRIMARY KEY" else sql.SQL("UNIQUE"), sql.Identifier(name)),
        label=f"indexes: constraint {name}")
