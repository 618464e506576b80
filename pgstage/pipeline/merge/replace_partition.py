"""replace_partition: the run's valid rows replace exactly the target rows of its partition, at once.

A run of several batches must never leave its partition half replaced, so batches do not
write the target: each batch but the last puts its rows in a logged collector table,
`pgstage._rp_<run>`, committed with the batch's checkpoint (a resumed run finds them there and
never collects a record twice). The run's last batch then swaps the partition in the same
transaction as its own checkpoint, writing the collected rows and its own straight into the
target (its rows are never collected: a run of one batch writes each row once). Readers see
the old partition until that commit and the new one after it.

Two ways to swap:
- delete + insert: `DELETE` the target rows in the window, `INSERT` the collector's rows;
- native (`partition.native = true`, the target is `PARTITION BY RANGE` on the column): the
  day is built as a table of its own, then the old partition is detached and dropped and the
  new one attached — no dead rows left behind, and only short locks on the parent.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import DatabaseError
from pgstage.names import COLLECTOR_PREFIX
from pgstage.pipeline import partition
from pgstage.pipeline.merge.keyed import MergeCounts, _deduplicated, _written_columns, build_has_duplicates
from pgstage.pipeline.stage import LEDGER_SCHEMA
from pgstage.pipeline.transform import ColumnType
from pgstage.pipeline.validate import Checked
from pgstage.spec import Spec


def collector(run_id: int) -> str:
    """The run's collector table in the ledger schema (kept until the run succeeds, like `_dup_<run>`)."""
    return f"{COLLECTOR_PREFIX}_{run_id}"


def build_collector(spec: Spec, checked: Checked, run_id: int) -> sql.Composed:
    """CREATE the collector with the columns a batch writes, typed as the target's; a resumed run keeps its own."""
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in _written_columns(spec, checked))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(
        sql.Identifier(LEDGER_SCHEMA, collector(run_id)), cols, sql.Identifier(*spec.target))


def build_collect(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int, beaten: str | None,
                  *, dedup: bool) -> sql.Composed:
    """INSERT the batch's valid rows (one per key when a key is given) into the collector."""
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in _written_columns(spec, checked))
    return sql.SQL("INSERT INTO {} ({cols}) SELECT {cols} FROM ({src}) s").format(
        sql.Identifier(LEDGER_SCHEMA, collector(run_id)), cols=cols,
        src=_deduplicated(spec, types, checked, beaten, dedup=dedup))


def collect(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
            beaten: str | None) -> MergeCounts:
    """A batch's share of the run: collected now, written by `swap` with the run's last batch."""
    dedup = False
    if spec.pipeline.key:
        found = execute(conn, build_has_duplicates(spec, checked), label="merge: duplicate keys?").fetchone()
        dedup = bool(found and found[0])
    written = execute(conn, build_collect(spec, types, checked, run_id, beaten, dedup=dedup),
                      label=f"merge: collect {checked.staged.source.name}").rowcount
    return MergeCounts(distinct=written, inserted=written, updated=0, unchanged=0, stale=0)


def _audit_insert(cols: list[str], into: sql.Composable, run_id: int, source: sql.Composable) -> sql.Composed:
    names = sql.SQL(", ").join(sql.Identifier(n) for n in cols)
    return sql.SQL("INSERT INTO {} ({names}, _loaded_at, _updated_at, _run_id) SELECT {names}, now(), now(), {run}"
                   " FROM {}").format(into, source, names=names, run=sql.Literal(run_id))


def build_delete(spec: Spec, w: partition.Window) -> sql.Composed:
    """DELETE the target's rows of the window (how many: the cursor's rowcount, not RETURNING, whose
    rows PostgreSQL would keep for the count: a quarter of a second a million rows)."""
    return sql.SQL("DELETE FROM {} t WHERE {}").format(sql.Identifier(*spec.target), partition.inside(w, "t"))


def build_insert(spec: Spec, cols: list[str], run_id: int) -> sql.Composed:
    """INSERT the collected rows (the earlier batches') into the target, with their audit columns."""
    return _audit_insert(cols, sql.Identifier(*spec.target), run_id, sql.Identifier(LEDGER_SCHEMA, collector(run_id)))


def build_insert_batch(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int, beaten: str | None,
                       *, dedup: bool, into: sql.Composable | None = None) -> sql.Composed:
    """INSERT the last batch's valid rows straight into the target (or the native build table), uncollected."""
    source = sql.SQL("({}) s").format(_deduplicated(spec, types, checked, beaten, dedup=dedup))
    return _audit_insert(_written_columns(spec, checked), into or sql.Identifier(*spec.target), run_id, source)


def build_table(spec: Spec, run_id: int) -> sql.Identifier:
    """The native path's new partition while it is built (renamed when attached)."""
    return sql.Identifier(spec.target[0], f"_pgstage_build_{run_id}")


def partition_name(spec: Spec, w: partition.Window) -> str:
    """The native partition's table name: `<table>_p20240115` (a day) or `<table>_p202401` (a month)."""
    suffix = "_p" + (w.lo.strftime("%Y%m%d") if w.grain == "day" else w.lo.strftime("%Y%m"))
    return spec.target[1][:63 - len(suffix)] + suffix


def build_native_swap(spec: Spec, w: partition.Window, cols: list[str], run_id: int, old_exists: bool,
                      fill: sql.Composed | None = None) -> list[tuple[str, sql.Composed]]:
    """The statements that swap a native partition: build the new table, detach and drop the old one, attach.

    `fill` writes the last batch's rows into the build table (`build_insert_batch`), after the
    collected ones. The new table gets a CHECK constraint equal to the partition bound, so
    ATTACH skips its scan of the rows; the target's indexes are built on it by ATTACH, before
    anyone sees it.
    """
    schema, table = spec.target
    name = partition_name(spec, w)
    build = build_table(spec, run_id)
    parent, old = sql.Identifier(schema, table), sql.Identifier(schema, name)
    lo, hi = partition.bounds(w)
    steps = [
        ("merge: build partition", sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS)").format(build, parent)),
        ("merge: fill partition", _audit_insert(cols, build, run_id, sql.Identifier(LEDGER_SCHEMA, collector(run_id)))),
        *([("merge: fill partition (last batch)", fill)] if fill is not None else []),
        ("merge: bound partition", sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL AND {})").format(
            build, sql.Identifier(f"_pgstage_bound_{run_id}"), sql.Identifier(w.column), partition.inside(w))),
    ]
    if old_exists:
        steps += [("merge: detach partition", sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, old)),
                  ("merge: drop old partition", sql.SQL("DROP TABLE {}").format(old))]
    steps += [
        ("merge: attach partition", sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, build, lo, hi)),
        ("merge: name partition", sql.SQL("ALTER TABLE {} RENAME TO {}").format(build, sql.Identifier(name))),
        ("merge: unbound partition", sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
            old, sql.Identifier(f"_pgstage_bound_{run_id}"))),
    ]
    return steps


def _count(conn: psycopg.Connection[Any], query: sql.Composed, label: str) -> int:
    row = execute(conn, query, label=label).fetchone()
    return int(row[0]) if row else 0


def swap(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], w: partition.Window,
         checked: Checked, run_id: int, beaten: str | None, *, unique_key: bool = False,
         deleted: int | None = None) -> MergeCounts:
    """The run's last batch: replace the window's target rows with the collected rows and its own, in the
    caller's transaction.

    Returns the last batch's counts, with how many rows were removed as `deleted`. The batch's
    rows go straight into the target (or the new partition), never through the collector.
    `unique_key`: the target has a unique index on exactly the key (`target.upsert_arbiter`).
    `deleted`: the window's rows were already deleted in this transaction, so many
    (delete + insert path, merge/early_delete.py).
    """
    cols = _written_columns(spec, checked)
    part = spec.pipeline.partition
    native = part is not None and part.native
    # With a unique index on the key, repeated keys are left for the index to find (see _insert_rows).
    optimistic = bool(spec.pipeline.key) and unique_key and not native
    dedup = bool(spec.pipeline.key) and not optimistic and _has_duplicates(conn, spec, checked)
    label = f"merge: insert partition (last batch) {checked.staged.source.name}"
    try:
        if native:
            schema = spec.target[0]
            old = sql.Identifier(schema, partition_name(spec, w))
            exists = _exists(conn, schema, partition_name(spec, w))
            deleted = _count(conn, sql.SQL("SELECT count(*) FROM {}").format(old), "merge: old partition") if exists else 0
            fill = build_insert_batch(spec, types, checked, run_id, beaten, dedup=dedup, into=build_table(spec, run_id))
            written = 0
            for step, statement in build_native_swap(spec, w, cols, run_id, exists, fill):
                cursor = execute(conn, statement, label=step)
                if statement is fill:
                    written = cursor.rowcount
        else:
            if deleted is None:
                deleted = execute(conn, build_delete(spec, w), label="merge: delete partition").rowcount
            execute(conn, build_insert(spec, cols, run_id), label="merge: insert partition")
            if optimistic:
                written = _insert_rows(conn, spec, types, checked, run_id, beaten, label)
            else:
                written = execute(conn, build_insert_batch(spec, types, checked, run_id, beaten, dedup=dedup),
                                  label=label).rowcount
    except DatabaseError as exc:
        outside = _outside(spec, w, exc)
        if outside is None:
            raise
        raise outside from exc
    return MergeCounts(distinct=written, inserted=written, updated=0, unchanged=0, stale=0, deleted=deleted)


def _insert_rows(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
                 run_id: int, beaten: str | None, label: str) -> int:
    """The batch's rows into a target whose unique index on the key judges repeated keys.

    A batch rarely repeats a key, and counting its distinct keys first reads it once more
    (a fifth of a second a million rows). So the rows go in as they are, inside a savepoint;
    only if the index refuses one are they rolled back, the keys counted, and the rows written
    again, one per key. A key the index still refuses is in the target outside the partition:
    the caller's error, as ever.
    """
    try:
        with conn.transaction():   # a savepoint
            return execute(conn, build_insert_batch(spec, types, checked, run_id, beaten, dedup=False),
                           label=label).rowcount
    except DatabaseError as exc:
        if not (isinstance(exc.__cause__, psycopg.errors.UniqueViolation) and _has_duplicates(conn, spec, checked)):
            raise
        return execute(conn, build_insert_batch(spec, types, checked, run_id, beaten, dedup=True),
                       label=f"{label} (one row per key)").rowcount


def _has_duplicates(conn: psycopg.Connection[Any], spec: Spec, checked: Checked) -> bool:
    found = execute(conn, build_has_duplicates(spec, checked), label="merge: duplicate keys?").fetchone()
    return bool(found and found[0])


def _outside(spec: Spec, w: partition.Window, exc: DatabaseError) -> DatabaseError | None:
    """A unique violation of the swap says a key of the partition's rows is in the target outside it."""
    if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
        return DatabaseError(f"partition {w.label}: a key of its rows is already in {spec.pipeline.target}"
                             f" outside the partition ({exc.message})",
                             hint="a key must stay in one partition; load the other partition again, or"
                                  " leave `key` out")
    return None


def _exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    row = execute(conn, sql.SQL("SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                                " WHERE n.nspname = %s AND c.relname = %s)"), (schema, table),
                  label="merge: partition exists?").fetchone()
    return bool(row and row[0])


def build_prediction(spec: Spec, types: dict[str, ColumnType], checked: Checked, beaten: str | None) -> sql.Composed:
    """How many rows the batch would add to the partition (the dry run's forecast)."""
    dedup = bool(spec.pipeline.key)
    return sql.SQL("SELECT count(*) FROM ({}) s").format(_deduplicated(spec, types, checked, beaten, dedup=dedup))


def predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
            beaten: str | None) -> MergeCounts:
    n = _count(conn, build_prediction(spec, types, checked, beaten), f"dry run: predict {checked.staged.source.name}")
    return MergeCounts(distinct=n, inserted=n, updated=0, unchanged=0, stale=0)


def predict_deleted(conn: psycopg.Connection[Any], spec: Spec, w: partition.Window, target_exists: bool) -> int:
    """How many target rows the swap would remove: those in the window now."""
    if not target_exists:
        return 0
    return _count(conn, sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
        sql.Identifier(*spec.target), partition.inside(w, "t")), "dry run: partition rows")


def ensure_collector(conn: psycopg.Connection[Any], spec: Spec, checked: Checked, run_id: int) -> None:
    execute(conn, build_collector(spec, checked, run_id), label="merge: collector")
