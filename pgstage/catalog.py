"""What a target table looks like now: its columns and row count, for orchestrators' metadata.

Dagster shows both beside each materialization (`dagster/column_schema`, `dagster/row_count`).
The count is exact (`count(*)`, one scan of the table), because a user compares it with the
ledger; on a very large table that scan is the price of the number.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from pgstage.db import connect, execute, resolve_url
from pgstage.spec import split_target


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    nullable: bool


@dataclass(frozen=True)
class TableDescription:
    target: str                     # schema.table as in the spec
    exists: bool
    row_count: int = 0
    columns: tuple[Column, ...] = ()


def columns_query() -> sql.Composed:
    """The table's live columns in their order, with PostgreSQL's own spelling of each type."""
    return sql.SQL(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum").format()


def count_query(schema: str, table: str) -> sql.Composed:
    return sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))


def describe_table(target: str, *, db: str | None = None) -> TableDescription:
    """Columns and exact row count of `schema.table`; `exists=False` when it is not there (yet)."""
    schema, table = split_target(target)
    with connect(resolve_url(db)) as conn:
        rows = execute(conn, columns_query(), (schema, table), label="catalog: columns").fetchall()
        if not rows:
            return TableDescription(target, exists=False)
        count = execute(conn, count_query(schema, table), label="catalog: row count").fetchone()
    return TableDescription(target, True, int(count[0]) if count else 0,
                            tuple(Column(name, type_, nullable) for name, type_, nullable in rows))
