"""`pgstage reprocess`: re-derive a target's rows from the raw records its loads kept.

When a transform was wrong (a `map` missing a value, a `normalize` forgotten), the raw record
of every row, kept in `[load] raw_column`, is all it takes to fix history. Each batch of the
target's heap pages is staged as JSON documents (the raw record is what a JSON Lines source
stages), run through the very validation pass of a load with the spec's current rules, its
rejects recorded as usual, and the rows whose values changed updated, all in one transaction
with its checkpoint in `pgstage.batches`: a kill -9 at any instant leaves a prefix of batches
done, and re-running resumes the same run after it, so no row is read twice. The run is in
the ledger as partition `reprocess`, with `read = rejected + updated + unchanged`.

Key columns are not rewritten (a row keeps its identity), and rows with no raw record are
left alone.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults, target as targets
from pgstage.db import connect, execute, resolve_url
from pgstage.errors import SpecError
from pgstage.names import RUN_ID, UPDATED_AT, checked_table, staged_prefix
from pgstage.pipeline import ledger, stage, transform, validate
from pgstage.pipeline.extract import SourceFile
from pgstage.pipeline.extract.csv import Header
from pgstage.pipeline.extract.digest import Digest
from pgstage.report import Counts, FileReport, RunReport
from pgstage.safety import apply_session_settings, pipeline_lock
from pgstage.spec import Spec, load_spec

PARTITION = "reprocess"     # the ledger's partition of a reprocess run: no load's partition is spelt so


def source_of(spec: Spec) -> SourceFile:
    """What a reprocess run reads, named for the ledger and the rejects."""
    return SourceFile(Path(f"{PARTITION}:{spec.pipeline.target}"), 0, Digest.known(""))


def build_stage(spec: Spec, table: str, first: int, end: int, record_start: int, run_id: int,
                where: sql.Composable | None) -> sql.Composed:
    """Stage the raw records of heap pages first..end-1 as documents, with each row's key (pure).

    Rows this run already rewrote (`_run_id`) moved to later pages: they are not read again.
    """
    keys = sql.SQL(", ").join(sql.SQL("t.{} AS {}").format(sql.Identifier(k), sql.Identifier(f"_key_{i}"))
                              for i, k in enumerate(spec.pipeline.key))
    raw = sql.Identifier(spec.load.raw_column or "")
    return sql.SQL(
        "CREATE UNLOGGED TABLE {table} AS SELECT ({start} + row_number() OVER () - 1)::bigint AS _rec, t.{raw} AS doc,"
        " {keys} FROM {target} t WHERE t.ctid >= {lo}::tid AND t.ctid < {hi}::tid AND t.{raw} IS NOT NULL"
        " AND t.{run} IS DISTINCT FROM {run_id}{where}").format(
        table=sql.Identifier("pgstage", table), start=sql.Literal(record_start), raw=raw, keys=keys,
        target=sql.Identifier(*spec.target), lo=sql.Literal(f"({first},0)"), hi=sql.Literal(f"({end},0)"),
        run=sql.Identifier(RUN_ID), run_id=sql.Literal(run_id),
        where=sql.SQL(" AND ({})").format(where) if where is not None else sql.SQL(""))


def build_update(spec: Spec, staged: str, checked: str, run_id: int, *, dry_run: bool) -> sql.Composed:
    """Write the re-derived values of rows that changed (dry run: count them) (pure)."""
    columns = [sql.Identifier(c) for c in spec.columns if c not in spec.pipeline.key]
    old = sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c in columns)
    new = sql.SQL(", ").join(sql.SQL("c.{}").format(c) for c in columns)
    match = sql.SQL(" AND ").join(sql.SQL("t.{} = s.{}").format(sql.Identifier(k), sql.Identifier(f"_key_{i}"))
                                  for i, k in enumerate(spec.pipeline.key))
    changed = sql.SQL("c._rec = s._rec AND {match} AND ({old}) IS DISTINCT FROM ({new})").format(
        match=match, old=sql.SQL("ROW({})").format(old), new=sql.SQL("ROW({})").format(new))
    tables = dict(staged=sql.Identifier("pgstage", staged), checked=sql.Identifier("pgstage", checked))
    if dry_run:
        return sql.SQL("SELECT count(*) FROM {target} t, {checked} c, {staged} s WHERE {changed}").format(
            target=sql.Identifier(*spec.target), changed=changed, **tables)
    return sql.SQL("UPDATE {target} t SET ({cols}, {updated_at}, {run}) = ({new}, now(), {run_id})"
                   " FROM {checked} c, {staged} s WHERE {changed}").format(
        target=sql.Identifier(*spec.target), cols=sql.SQL(", ").join(columns), new=new,
        updated_at=sql.Identifier(UPDATED_AT), run=sql.Identifier(RUN_ID), run_id=sql.Literal(run_id),
        changed=changed, **tables)


def reprocess(spec: Spec | str | Path, *, db: str | None = None, where: str | None = None, dry_run: bool = False,
              batch_rows: int = 50_000, pause_s: float = 0.0) -> RunReport:
    """Re-derive the target's rows from their raw records; see the module's docstring."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    if spec.load.raw_column is None:
        raise SpecError(f"{spec.path or 'spec'}: pipeline {spec.pipeline.name!r} keeps no raw records, so there is"
                        " nothing to reprocess from",
                        hint="add raw_column = \"_raw\" under [load]: loads from then on keep each record as JSONB"
                             " in that column, and `pgstage reprocess` can re-derive those rows")
    started = time.monotonic()
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        apply_session_settings(conn, spec.load)
        types = transform.resolve_types(conn, spec)
        targets.check(conn, spec, types) or _no_target(spec)
        predicate = _where(spec, types, where)
        with ExitStack() as locks:
            locks.enter_context(pipeline_lock(conn, spec.pipeline.name, None))
            locks.enter_context(pipeline_lock(conn, spec.pipeline.name, PARTITION))
            run_id = _run(conn, spec, dry_run)
            context = validate.Context(transform.case_collation(conn), True)
            totals = _batches(conn, spec, types, context, run_id, predicate, dry_run, batch_rows, pause_s)
            by_rule = ledger.rejects_by_rule(conn, run_id)
            source = source_of(spec)
            files = [{"path": source.name, "status": "loaded", "rows": totals.as_dict(), "ignored_fields": []}]
            with conn.transaction():
                ledger.finish_run(conn, run_id, "succeeded", totals, by_rule, files)
    return RunReport(run_id, spec.pipeline.name, PARTITION, "succeeded", totals, by_rule,
                     round(time.monotonic() - started, 3), spec.pipeline.target,
                     (FileReport(source.name, "loaded", totals),), dry_run=dry_run)


def _no_target(spec: Spec) -> bool:
    raise SpecError(f"target {spec.pipeline.target} does not exist: there is nothing to reprocess",
                    hint="`pgstage run` creates and loads it")


def _where(spec: Spec, types: dict[str, transform.ColumnType], where: str | None) -> sql.Composable | None:
    """`--where`, parsed and rebuilt like a `[checks]` entry (no text reaches SQL unparsed)."""
    if where is None:
        return None
    from pgstage.checks import compile_check

    try:
        return compile_check("where", where, {n: t.name for n, t in types.items()})
    except SpecError as exc:
        raise SpecError("--where: " + exc.message.removeprefix("checks.where: "),
                        hint="one SQL condition over the target's columns, e.g. \"status = 'paid'\"") from None


def _run(conn: psycopg.Connection[Any], spec: Spec, dry_run: bool) -> int:
    """The unfinished reprocess run of this pipeline, reopened, else a new one."""
    resumed = None if dry_run else ledger.resumable_run(conn, spec.pipeline.name, PARTITION)
    with conn.transaction():
        if resumed is not None:
            ledger.reopen_run(conn, resumed)
            return resumed
        return ledger.start_run(conn, spec.pipeline.name, PARTITION, spec.pipeline.target,
                                str(spec.path) if spec.path else None, dry_run=dry_run)


def _batches(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, transform.ColumnType],
             context: validate.Context, run_id: int, where: sql.Composable | None, dry_run: bool, batch_rows: int,
             pause_s: float) -> Counts:
    ledger.discard_unmerged(conn, run_id)
    source = source_of(spec)
    row = execute(conn, sql.SQL(
        "SELECT coalesce(max(batch_no) + 1, 0), coalesce(max(byte_end), 0), coalesce(max(record_end) + 1, 1)"
        " FROM pgstage.batches WHERE run_id = %s AND file = %s"), (run_id, source.name),
        label="reprocess: resume").fetchone()
    assert row is not None
    batch_no, page, record = int(row[0]), int(row[1]), int(row[2])
    size = execute(conn, sql.SQL(
        "SELECT relpages, reltuples, pg_relation_size(oid) / current_setting('block_size')::bigint"
        " FROM pg_class WHERE oid = to_regclass(%s)"), (sql.Identifier(*spec.target).as_string(),),
        label="reprocess: pages").fetchone()
    assert size is not None
    per_page = float(size[1]) / int(size[0]) if int(size[0]) > 0 and float(size[1]) > 0 else 100.0
    step, last = max(1, int(batch_rows / per_page)), int(size[2])
    while page < last:
        end = min(page + step, last)
        staged_table, checked = f"{staged_prefix(run_id, 1)}_{batch_no}", checked_table(run_id, 1, batch_no)
        with conn.transaction():
            read = execute(conn, build_stage(spec, staged_table, page, end, record, run_id, where),
                           label="reprocess: stage").rowcount
            staged = stage.StagedBatch(source, 1, batch_no, staged_table, Header(()), {}, page, end, record,
                                       read=read, kind="jsonl", spanned=read)
            result = validate.check(conn, spec, types, staged, checked, run_id, context)
            updated = execute(conn, build_update(spec, staged_table, checked, run_id, dry_run=dry_run),
                              label="reprocess: update")
            changed = int(updated.fetchone()[0]) if dry_run else updated.rowcount   # type: ignore[index]
            valid = read - result.rejected_by_rules
            counts = Counts(read=read, rejected=result.rejected_by_rules, valid=valid, updated=changed,
                            unchanged=valid - changed)
            counts.check_merged()
            ledger.record_batch(conn, run_id, staged, counts, "merged")
            stage.drop(conn, staged_table)
            execute(conn, sql.SQL("DROP TABLE {}").format(sql.Identifier("pgstage", checked)), label="reprocess: drop")
        faults.hit("reprocess.batch")
        batch_no, page, record = batch_no + 1, end, record + read
        if pause_s:
            time.sleep(pause_s)
    totals = ledger.batch_counts(conn, run_id).get(source.name, Counts())
    return totals
