"""append: every valid record becomes a row, identified by `_source_file` and `_record`.

No key and no dedup. The target's `UNIQUE (_source_file, _record)` guarantees that no record
is ever written twice, whatever a resumed run does (each batch commits with its checkpoint,
so a resume starts after the last committed record anyway). A file loaded before with the
same bytes is skipped (the file ledger). A file whose name already has rows in the target —
`--force`, or changed bytes under the same name — replaces exactly those rows in one
transaction: its batches go to a collector table (as with replace_partition) and the file's
last batch deletes the old rows and inserts the new ones together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.names import LEDGER_SCHEMA
from pgstage.pipeline.merge.keyed import MergeCounts, _deduplicated, _written_columns
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

if TYPE_CHECKING:
    from pgstage.pipeline.validate import Checked

COLUMNS = {"_source_file": "text", "_record": "bigint"}


def collector(run_id: int) -> str:
    """replace_partition's collector table, which a replaced file's batches share. Imported when a run collects:
    the target's check reads `COLUMNS` on every run, a skipped one too, which needs no partition code."""
    from pgstage.pipeline.merge import replace_partition

    return replace_partition.collector(run_id)


def ddl(spec: Spec) -> list[sql.Composable]:
    """The record identity columns of an append target, and their uniqueness."""
    return [sql.SQL("_source_file text NOT NULL"), sql.SQL("_record bigint NOT NULL"),
            sql.SQL("UNIQUE (_source_file, _record)")]


def _names(spec: Spec, checked: Checked) -> list[str]:
    return [*_written_columns(spec, checked), "_source_file", "_record"]


def build_rows(spec: Spec, types: dict[str, ColumnType], checked: Checked) -> sql.Composed:
    """SELECT the batch's valid rows with their file name and record number."""
    return sql.SQL("SELECT s.*, {} AS _source_file FROM ({}) s").format(
        sql.Literal(checked.staged.source.name), _deduplicated(spec, types, checked, None, dedup=False, record=True))


def build_insert(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
                 into: sql.Composable | None = None) -> sql.Composed:
    """INSERT the batch's rows into the target (with audit columns), or into the collector."""
    names = sql.SQL(", ").join(sql.Identifier(n) for n in _names(spec, checked))
    if into is not None:
        return sql.SQL("INSERT INTO {} ({n}) SELECT {n} FROM ({}) r").format(
            into, build_rows(spec, types, checked), n=names)
    return sql.SQL("INSERT INTO {} ({n}, _loaded_at, _updated_at, _run_id) SELECT {n}, now(), now(), {run}"
                   " FROM ({}) r").format(sql.Identifier(*spec.target), build_rows(spec, types, checked), n=names,
                                          run=sql.Literal(run_id))


def replaced_files(conn: psycopg.Connection[Any], spec: Spec, names: list[str], run_id: int) -> set[str]:
    """Which of these files already have rows in the target written by another run: those are replaced.

    Rows this run wrote are not counted, so a resumed run decides as the killed one did.
    """
    rows = execute(conn, sql.SQL("SELECT DISTINCT _source_file FROM {} WHERE _source_file = ANY(%s) AND _run_id <> %s")
                   .format(sql.Identifier(*spec.target)), (names, run_id), label="merge: files to replace").fetchall()
    return {r[0] for r in rows}


def build_collector(spec: Spec, checked: Checked, run_id: int) -> sql.Composed:
    names = sql.SQL(", ").join(sql.Identifier(n) for n in _names(spec, checked))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(
        sql.Identifier(LEDGER_SCHEMA, collector(run_id)), names, sql.Identifier(*spec.target))


def ensure_collector(conn: psycopg.Connection[Any], spec: Spec, checked: Checked, run_id: int) -> None:
    execute(conn, build_collector(spec, checked, run_id), label="merge: collector")


def merge(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
          *, replacing: bool) -> MergeCounts:
    """Write (or, when the file replaces its earlier rows, collect) one batch."""
    into = sql.Identifier(LEDGER_SCHEMA, collector(run_id)) if replacing else None
    written = execute(conn, build_insert(spec, types, checked, run_id, into),
                      label=f"merge: append {checked.staged.source.name}").rowcount
    return MergeCounts(distinct=written, inserted=written, updated=0, unchanged=0, stale=0)


def swap_file(conn: psycopg.Connection[Any], spec: Spec, checked: Checked, run_id: int) -> int:
    """With a replaced file's last batch: delete its old rows, insert the collected ones; returns `deleted`."""
    target = sql.Identifier(*spec.target)
    name = checked.staged.source.name
    row = execute(conn, sql.SQL("WITH d AS (DELETE FROM {} WHERE _source_file = %s RETURNING 1) SELECT count(*) FROM d")
                  .format(target), (name,), label="merge: append replace file").fetchone()
    names = sql.SQL(", ").join(sql.Identifier(n) for n in _names(spec, checked))
    execute(conn, sql.SQL("INSERT INTO {} ({n}, _loaded_at, _updated_at, _run_id) SELECT {n}, now(), now(), %s"
                          " FROM {} WHERE _source_file = %s").format(
        target, sql.Identifier(LEDGER_SCHEMA, collector(run_id)), n=names), (run_id, name),
        label="merge: append insert file")
    return int(row[0]) if row else 0


def predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked) -> MergeCounts:
    return MergeCounts(distinct=checked.valid, inserted=checked.valid, updated=0, unchanged=0, stale=0)


def predict_deleted(conn: psycopg.Connection[Any], spec: Spec, name: str, target_exists: bool) -> int:
    """How many rows of this file the target holds now (a forced reload would replace them)."""
    if not target_exists:
        return 0
    row = execute(conn, sql.SQL("SELECT count(*) FROM {} WHERE _source_file = %s").format(sql.Identifier(*spec.target)),
                  (name,), label="dry run: file rows").fetchone()
    return int(row[0]) if row else 0
