"""What pgstage is measured against: the fastest load one could hand-write, with and without safety.

* `naive`: COPY the file straight into the typed, indexed target. No dedup, no upsert,
  no validation: the first bad row aborts everything. This is the floor for an initial load.
* `bare_sql`: COPY into an UNLOGGED all-text table, then one
  `INSERT … SELECT DISTINCT ON … ON CONFLICT DO UPDATE … WHERE older`. Same normalization
  and casts as the pgstage spec, same upsert-if-newer semantics, but no rule checks, no
  reject accounting, no ledger and no audit columns. The floor for a re-runnable upsert.

Both targets carry the primary key and one secondary index on updated_at, like the pgstage
target in the scenarios. `setup_*` runs untimed in the parent; `load_*` is what the child
process times.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

SCHEMA = "bench"
TABLE = "orders"
COPY_CHUNK = 1 << 20
COLUMNS = ("order_id", "email", "total", "currency", "created_at", "updated_at", "status")

TARGET = sql.Identifier(SCHEMA, TABLE)
STAGE = sql.Identifier(SCHEMA, "orders_stage")
INDEX = sql.Identifier("orders_updated_at")


def _create_target(conn: psycopg.Connection[Any], total_type: str) -> None:
    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)))
    conn.execute(sql.SQL(
        "CREATE TABLE {} (order_id bigint PRIMARY KEY, email text, {} {}, currency character(3),"
        " created_at timestamptz, updated_at timestamptz, status text)").format(
        TARGET, sql.Identifier("total" if total_type == "numeric(12,2)" else "total_cents"), sql.SQL(total_type)))
    conn.execute(sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(INDEX, TARGET))


def setup_naive(conn: psycopg.Connection[Any]) -> None:
    """The typed target a straight COPY can fill: total stays a decimal (COPY cannot scale it to cents)."""
    _create_target(conn, "numeric(12,2)")


def setup_bare_sql(conn: psycopg.Connection[Any]) -> None:
    """The same typed columns pgstage creates from the spec (total as bigint cents), without audit columns."""
    _create_target(conn, "bigint")


def copy_file(conn: psycopg.Connection[Any], statement: sql.Composed, path: Path) -> int:
    """Stream a file through COPY in 1 MB chunks; returns the rows COPY reports."""
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy, path.open("rb") as source:
            while chunk := source.read(COPY_CHUNK):
                copy.write(chunk)
        return cursor.rowcount


def load_naive(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    rows = copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(TARGET), path)
    return {"read": rows, "inserted": rows}


def _merge_statement() -> sql.Composed:
    typed = sql.SQL(
        "SELECT order_id::bigint AS order_id, lower(btrim(email)) AS email,"
        " (replace(total, ',', '')::numeric * 100)::bigint AS total_cents,"
        " upper(btrim(currency))::character(3) AS currency, created_at::timestamptz AS created_at,"
        " updated_at::timestamptz AS updated_at, status FROM {}").format(STAGE)
    rest = ("email", "total_cents", "currency", "created_at", "updated_at", "status")
    sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in rest)
    return sql.SQL(
        "INSERT INTO {target} AS t (order_id, {rest})"
        " SELECT DISTINCT ON (s.order_id) s.* FROM ({typed}) s ORDER BY s.order_id, s.updated_at DESC NULLS LAST"
        " ON CONFLICT (order_id) DO UPDATE SET {sets} WHERE t.updated_at < EXCLUDED.updated_at").format(
        target=TARGET, rest=sql.SQL(", ").join(sql.Identifier(c) for c in rest), typed=typed, sets=sets)


def load_bare_sql(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    """Stage, then one upsert statement; returns rows read and rows written (inserted or updated)."""
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in COLUMNS)
    conn.execute(sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(STAGE, columns))
    read = copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(STAGE), path)
    written = conn.execute(_merge_statement()).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(STAGE))
    return {"read": read, "written": written}
