"""pandas: `read_csv` of the whole file, then `DataFrame.to_sql(if_exists="append")` with a COPY method.

`method="multi"` sends one INSERT with a parameter per value and breaks on PostgreSQL's
65,535-parameter limit at large chunks; the default sends row-at-a-time INSERTs. The method
below instead streams each chunk through one psycopg COPY, the fastest way to_sql allows.
Append only: to_sql has no upsert.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pandas as pd
import psycopg
import sqlalchemy
from psycopg import sql

CHUNK_ROWS = 100_000


def copy_chunk(table: Any, conn: Any, keys: list[str], data_iter: Iterable[tuple[Any, ...]]) -> int:
    """to_sql's `method` hook: one COPY per chunk, each row formatted by psycopg (not by a csv writer)."""
    name = sql.Identifier(table.schema, table.name) if table.schema else sql.Identifier(table.name)
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(name, sql.SQL(", ").join(map(sql.Identifier, keys)))
    driver: psycopg.Connection[Any] = conn.connection.driver_connection
    with driver.cursor() as cursor:
        with cursor.copy(statement) as copy:
            for row in data_iter:
                copy.write_row(row)
        return cursor.rowcount


def load(job: dict[str, Any]) -> dict[str, Any]:
    conninfo = job["db"]["conninfo"]
    engine = sqlalchemy.create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(conninfo))
    try:
        frame = pd.read_csv(job["file"])
        written = frame.to_sql("orders", engine, schema="bench", if_exists="append", index=False,
                               chunksize=CHUNK_ROWS, method=copy_chunk)
    finally:
        engine.dispose()
    return {"tool_output": f"to_sql wrote {written} rows"}
