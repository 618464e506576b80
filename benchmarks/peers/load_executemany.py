"""Plain psycopg: `executemany` of one INSERT … ON CONFLICT DO UPDATE … WHERE newer, on a sample.

What one writes without a loader: csv.reader, one statement per row (psycopg 3 pipelines
them), one transaction. Too slow to run on a million rows on every benchmark run, so it
loads a sample (the first `sample` rows; for the incremental file every k-th row, which
keeps its mix of updates and new keys) and the report extrapolates its rate, saying so.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from benchmarks.baselines import COLUMNS, TARGET
from benchmarks.peers import target

CASTS = {"order_id": "bigint", "total": "numeric", "created_at": "timestamptz", "updated_at": "timestamptz"}


def statement() -> sql.Composed:
    values = sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(CASTS[c])) if c in CASTS else sql.SQL("%s") for c in COLUMNS)
    sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in COLUMNS[1:])
    return sql.SQL("INSERT INTO {target} AS t ({columns}) VALUES ({values}) ON CONFLICT (order_id)"
                   " DO UPDATE SET {sets} WHERE t.updated_at < EXCLUDED.updated_at").format(
        target=TARGET, columns=sql.SQL(", ").join(map(sql.Identifier, COLUMNS)), values=values, sets=sets)


def sample(path: Path, size: int, *, spread: bool) -> list[list[str]]:
    """The first `size` records, or (spread) every k-th record so that about `size` are taken."""
    with path.open(newline="", encoding="utf-8") as source:
        records = csv.reader(source)
        next(records)
        if not spread:
            return [r for _, r in zip(range(size), records)]
        rows = list(records)
    step = max(1, -(-len(rows) // size))
    return rows[::step]


def load(job: dict[str, Any]) -> dict[str, Any]:
    rows = sample(Path(job["file"]), job["sample"], spread=job["step"] == "incremental")
    with psycopg.connect(job["db"]["conninfo"]) as conn, conn.cursor() as cursor:
        cursor.executemany(statement(), rows)
    floor = target.new_key_floor(job["rows"])
    return {"rows_sent": len(rows), "sample_new": sum(1 for r in rows if int(r[0]) >= floor)}
