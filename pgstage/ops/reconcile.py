"""Reconciliation: does the target hold what the source says? (SPEC §9)

File sources are compared by key (`_by_keys`): the partition's files are staged and validated
through the run's own path, inside one transaction that is rolled back (nothing is written,
like a dry run), deduplicated as the merge would (the greatest version, then the latest
record, wins), and joined with the target. Findings: `missing` (in the source, not in the
target), `different` (values differ, unless the target holds a newer version), and for the
strategies that own a slice of the target, `extra`: `replace_partition` (rows of the
partition the source lacks) and `append` (rows of the same files the source lacks; its key is
the file and record number).

PostgreSQL sources are compared by checksums (pgstage/ops/_checksums.py): key-hash ranges
with counts and checksums on both sides, recursing only into ranges that differ, and
fetching rows only once a range is small.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage import target
from pgstage.db import connect, execute, resolve_url
from pgstage.errors import UsageError
from pgstage.ops import logs
from pgstage.pipeline import ledger, stage, transform, validate
from pgstage.pipeline.extract import resolve_files
from pgstage.names import LEDGER_SCHEMA, checked_table, staged_prefix
from pgstage.pipeline.stage import StartPoint
from pgstage.spec import Spec, load_spec

SAMPLES = 20
APPEND_KEY = ("_source_file", "_record")    # what identifies an appended row (SPEC §3.1, `append`)


@dataclass(frozen=True)
class Finding:
    """One kind of difference: how many, up to 20 sample keys, and (for `different`) which columns."""

    count: int = 0
    sample: tuple[dict[str, Any], ...] = ()
    columns: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "sample": list(self.sample), **({"columns": self.columns} if self.columns else {})}


@dataclass(frozen=True)
class ReconcileResult:
    pipeline: str
    partition: str | None
    target: str
    method: str                      # keys (file sources) | checksums (postgres sources)
    source_rows: int
    target_rows: int
    missing: Finding = Finding()
    different: Finding = Finding()
    extra: Finding | None = None     # None: the strategy does not own a slice of the target
    in_flight: int = 0               # postgres: rows changed after the last watermark, left out
    newer_in_target: int = 0         # upsert_if_newer: the target's version is newer (not a difference)
    fetched: int = 0                 # postgres: rows fetched from the source (the rest compared as checksums)
    ranges: int = 0                  # postgres: key ranges compared
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def differences(self) -> bool:
        return bool(self.missing.count or self.different.count or (self.extra and self.extra.count))

    @property
    def summary(self) -> str:
        parts = [f"{self.missing.count:,} missing", f"{self.different.count:,} different"]
        if self.extra is not None:
            parts.append(f"{self.extra.count:,} extra")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline, "partition": self.partition, "target": self.target, "method": self.method,
            "differences": self.differences, "summary": self.summary,
            "source_rows": self.source_rows, "target_rows": self.target_rows,
            "missing": self.missing.as_dict(), "different": self.different.as_dict(),
            "extra": self.extra.as_dict() if self.extra is not None else None,
            "in_flight": self.in_flight, "newer_in_target": self.newer_in_target, "fetched": self.fetched,
            "ranges": self.ranges, "notes": list(self.notes), "seconds": round(self.seconds, 3),
        }


def reconcile(spec: Spec | str | Path, *, partition: str | date | None = None, db: str | None = None,
              base_dir: Path | None = None, run_id: int | None = None) -> ReconcileResult:
    """Compare source and target; store the result with `run_id` (else the partition's latest successful run)."""
    from pgstage.run import parse_partition   # pgstage.run imports ops: a top-level import would be circular

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    day = parse_partition(partition)
    part = day.isoformat() if day else None
    url = resolve_url(db)
    started = time.perf_counter()
    with connect(url) as conn:
        ledger.ensure(conn)
        if target.existing_columns(conn, spec) is None:
            raise UsageError(f"the target {spec.pipeline.target} does not exist yet: nothing to reconcile",
                             hint=f"load it first with `pgstage run {spec.path or 'SPEC'}`")
        if spec.source.kind == "postgres":
            from pgstage.ops import _checksums

            result = _checksums.compare(conn, spec, part)
        else:
            base = base_dir or (spec.path.parent if spec.path else Path.cwd())
            files = resolve_files(spec.source.path or "", base, day, allow_missing=spec.source.allow_missing)
            result = _by_keys(conn, spec, part, files)
        result = _with_seconds(result, time.perf_counter() - started)
        run_id = store(conn, spec.pipeline.name, part, run_id, result)
    logs.emit("reconcile differences" if result.differences else "reconcile result", run_id=run_id,
              pipeline=spec.pipeline.name, partition=part, summary=result.summary, method=result.method,
              source_rows=result.source_rows, target_rows=result.target_rows, in_flight=result.in_flight,
              fetched=result.fetched)
    return result


def _with_seconds(result: ReconcileResult, seconds: float) -> ReconcileResult:
    from dataclasses import replace

    return replace(result, seconds=seconds)


def store(conn: psycopg.Connection[Any], pipeline: str, partition: str | None, run_id: int | None,
          result: ReconcileResult) -> int | None:
    """Keep the result with its run (shown by `pgstage show`); a standalone check goes to the latest success.

    Returns the run it was stored with (None: the partition has no successful run).
    """
    row = execute(conn, sql.SQL(
        "UPDATE pgstage.runs SET reconcile = %(result)s WHERE run_id = coalesce(%(run)s::bigint, (SELECT max(run_id)"
        " FROM pgstage.runs WHERE pipeline = %(pipeline)s AND partition IS NOT DISTINCT FROM %(partition)s"
        " AND status = 'succeeded' AND NOT dry_run)) RETURNING run_id"),
        {"result": json.dumps(result.as_dict()), "run": run_id, "pipeline": pipeline, "partition": partition},
        label="reconcile: store").fetchone()
    return int(row[0]) if row else None


# --- file sources: by key -----------------------------------------------------------------------------


def keys_of(spec: Spec) -> tuple[str, ...]:
    """What identifies a row in the comparison: `append`'s file and record, else the key, else (a keyless
    `replace_partition`) every column: a row is then its values."""
    if spec.pipeline.strategy == "append":
        return APPEND_KEY
    return tuple(spec.pipeline.key) or tuple(spec.columns)


def compared_columns(spec: Spec) -> list[str]:
    return [n for n in spec.columns if n not in keys_of(spec)]


def build_source_rows(spec: Spec, types: dict[str, transform.ColumnType], checked: list[tuple[str, str]]
                      ) -> sql.Composed:
    """The valid source rows, one per key as the merge would keep it (pure). `checked`: (file, checked table).

    A `const` column is not in the checked table: its typed value is added, as the merge does.
    """
    names = [sql.SQL("{} AS {}").format(transform.const(c, types[n]), sql.Identifier(n)) if c.const is not None
             else sql.Identifier(n) for n, c in spec.columns.items()]
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS _file_no, {} AS _source_file, _rec AS _record, {} FROM {}").format(
            sql.Literal(i), sql.Literal(name), sql.SQL(", ").join(names), sql.Identifier(LEDGER_SCHEMA, table))
        for i, (name, table) in enumerate(checked))
    order: list[sql.Composable] = [sql.Identifier(k) for k in keys_of(spec)]   # DISTINCT ON's own keys first
    version = spec.pipeline.version
    if version and spec.columns[version].const is None:
        order.append(sql.SQL("{} DESC NULLS LAST").format(sql.Identifier(version)))
    order += [sql.SQL("_file_no DESC"), sql.SQL("_record DESC")]
    return sql.SQL("SELECT DISTINCT ON ({}) * FROM ({}) u ORDER BY {}").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in keys_of(spec)), union, sql.SQL(", ").join(order))


def _key_json(spec: Spec, alias: str) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}.{}").format(sql.Literal(k), sql.Identifier(alias), sql.Identifier(k)) for k in keys_of(spec)))


def _matches(spec: Spec) -> sql.Composable:
    """Source row `s` and target row `t` are the same row: equal keys (a keyless row's values may be NULL)."""
    op = sql.SQL(" = " if spec.pipeline.key or spec.pipeline.strategy == "append" else " IS NOT DISTINCT FROM ")
    return sql.SQL(" AND ").join(sql.SQL("t.{0}{1}s.{0}").format(sql.Identifier(k), op) for k in keys_of(spec))


def compared_rows(spec: Spec) -> sql.Composable | None:
    """Which target rows `t` the source is compared with: for `scd2` its current versions (closed ones are
    history, not the source's business); None: all."""
    return sql.SQL("t._is_current") if spec.pipeline.strategy == "scd2" else None


def build_compare(spec: Spec, source_rows: sql.Composable, table: str) -> sql.Composed:
    """CREATE a temporary table of every source row's fate against the target: missing, different, newer, same (pure).

    Column names are literals: PostgreSQL takes no parameters in CREATE TABLE AS.
    """
    on = _matches(spec)
    diffs = sql.SQL("array_remove(ARRAY[{}]::text[], NULL)").format(sql.SQL(", ").join(
        sql.SQL("CASE WHEN s.{0} IS DISTINCT FROM t.{0} THEN {1} END").format(sql.Identifier(c), sql.Literal(c))
        for c in compared_columns(spec)) or sql.SQL(""))
    newer: sql.Composable = sql.SQL("false")
    if spec.pipeline.strategy == "upsert_if_newer" and spec.pipeline.version:
        newer = sql.SQL("t.{0} > s.{0}").format(sql.Identifier(spec.pipeline.version))
    return sql.SQL(
        "CREATE TEMPORARY TABLE {table} ON COMMIT DROP AS SELECT {key} AS key, CASE WHEN t.ctid IS NULL THEN 'missing'"
        " WHEN cardinality(d.cols) = 0 THEN 'same' WHEN {newer} THEN 'newer' ELSE 'different' END AS kind, d.cols"
        " FROM ({source}) s LEFT JOIN {target} t ON {on} CROSS JOIN LATERAL (SELECT {diffs} AS cols) d").format(
        table=sql.Identifier(table), key=_key_json(spec, "s"), newer=newer, source=source_rows,
        target=target.ident(spec), on=sql.SQL(" AND ").join([on, *filter(None, [compared_rows(spec)])]), diffs=diffs)


def build_extra(spec: Spec, source_rows: sql.Composable, partition: str | None, files: list[str]) -> sql.Composed | None:
    """The target rows of the slice the run owns that the source does not have, or None (pure).

    `replace_partition` owns the partition's rows (by `partition.column`), `append` its files' rows.
    """
    strategy = spec.pipeline.strategy
    if strategy == "replace_partition":
        column = getattr(getattr(spec.pipeline, "partition", None), "column", None)
        if not column or partition is None:
            return None
        scope: sql.Composable = sql.SQL("t.{0} >= {1}::date AND t.{0} < {1}::date + 1").format(
            sql.Identifier(column), sql.Literal(partition))
    elif strategy == "append":
        scope = sql.SQL("t._source_file = ANY({})").format(sql.Literal(files))
    else:
        return None
    on = _matches(spec)
    return sql.SQL("SELECT {key} FROM {target} t WHERE {scope} AND NOT EXISTS (SELECT 1 FROM ({source}) s WHERE {on})"
                   ).format(key=_key_json(spec, "t"), target=target.ident(spec), scope=scope,
                                          source=source_rows, on=on)


class _Rollback(Exception):
    """Leaves the comparison's transaction: nothing it staged, validated or recorded is kept."""


def _by_keys(conn: psycopg.Connection[Any], spec: Spec, partition: str | None, files: list[Any]) -> ReconcileResult:
    types = transform.resolve_types(conn, spec)
    context = validate.Context(transform.case_collation(conn), target_exists=True)
    outcome: dict[str, Any] = {}
    try:
        with conn.transaction():
            checked: list[tuple[str, str]] = []
            for file_no, source in enumerate(files):
                for batch in stage.stage_batches(conn, spec, source, file_no=file_no,
                                                 table_prefix=staged_prefix(0, file_no), start=StartPoint(),
                                                 batch_rows=spec.load.batch_rows):
                    # run id 0: its rejects, like everything else here, are rolled back
                    done = validate.check(conn, spec, types, batch, checked_table(0, file_no, batch.batch_no), 0,
                                          context)
                    checked.append((source.name, done.table))
            outcome = _compare(conn, spec, partition, checked, [f.name for f in files])
            raise _Rollback
    except _Rollback:
        pass
    return ReconcileResult(spec.pipeline.name, partition, spec.pipeline.target, "keys", **outcome)


def _compare(conn: psycopg.Connection[Any], spec: Spec, partition: str | None, checked: list[tuple[str, str]],
             files: list[str]) -> dict[str, Any]:
    compared = _count(conn, sql.SQL("SELECT count(*) FROM {} t WHERE {}").format(
        target.ident(spec), compared_rows(spec) or sql.SQL("true")))
    if not checked:
        return {"source_rows": 0, "target_rows": compared, "notes": ("no source rows: the partition has no file",)}
    rows = build_source_rows(spec, transform.resolve_types(conn, spec), checked)
    execute(conn, build_compare(spec, rows, "pgstage_reconcile"), label="reconcile: compare")
    counts = dict(execute(conn, sql.SQL("SELECT kind, count(*) FROM pgstage_reconcile GROUP BY kind"),
                          label="reconcile: counts").fetchall())

    def sample(kind: str) -> tuple[dict[str, Any], ...]:
        found = execute(conn, sql.SQL("SELECT key, cols FROM pgstage_reconcile WHERE kind = %s ORDER BY key LIMIT %s"),
                        (kind, SAMPLES), label="reconcile: sample").fetchall()
        return tuple({"key": k, **({"columns": c} if kind == "different" else {})} for k, c in found)

    columns = dict(execute(conn, sql.SQL(
        "SELECT c, count(*) FROM pgstage_reconcile, unnest(cols) c WHERE kind = 'different' GROUP BY c ORDER BY c"),
        label="reconcile: columns").fetchall())
    extra = None
    query = build_extra(spec, rows, partition, files)
    if query is not None:
        keys = execute(conn, sql.SQL("SELECT key, count(*) OVER () FROM ({}) x(key) ORDER BY key LIMIT {}").format(
            query, sql.Literal(SAMPLES)), label="reconcile: extra").fetchall()
        extra = Finding(int(keys[0][1]) if keys else 0, tuple({"key": k} for k, _ in keys))
    return {"source_rows": sum(counts.values()), "target_rows": compared,
            "missing": Finding(int(counts.get("missing", 0)), sample("missing")),
            "different": Finding(int(counts.get("different", 0)), sample("different"),
                                 {str(c): int(n) for c, n in columns.items()}),
            "extra": extra, "newer_in_target": int(counts.get("newer", 0))}


def _count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = execute(conn, query, label="reconcile: count").fetchone()
    return int(row[0]) if row else 0
