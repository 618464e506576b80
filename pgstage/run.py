"""Read this first: one run of a pipeline, top to bottom as in SPEC §4.

    lock → resume an interrupted run, or start one; skip files already loaded
    → phase 1, per file and batch: extract + stage → validate (+ transform) → checkpoint
    → reject threshold over the whole run
    → phase 2, per batch, one transaction each: merge + checkpoint (+ the file's fingerprint
      with its last batch) → rebuild indexes → close the run → report.

Nothing reaches the target unless the whole run is under its reject threshold. A killed
run resumes at its first unmerged batch under the same run id; transient database faults
are retried with backoff, resuming the same way. The run's counts are the sum of its
batches' counts in the ledger, so they balance across crashes.

Batches are validated and merged by a pool of `load.workers` sessions (workers.py) while
this session stages the next batch; merges commit in batch order, so a crash leaves a prefix.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, replace
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pgstage import faults, indexes, target
from pgstage.db import connect, resolve_url, wrap
from pgstage.errors import (ConnectionFailed, HeaderMismatch, Location, PgstageError, RejectLimitExceeded, Transient, TransientDatabaseError,
                            UsageError)
from pgstage.pipeline import known, ledger, merge, stage, transform, validate
from pgstage.pipeline.extract import SourceFile, postgres, resolve_files
from pgstage.report import Counts, FileReport, RunReport
from pgstage.safety import apply_session_settings, pipeline_lock
from pgstage.spec import Spec, load_spec
from pgstage.workers import InOrder, Workers, results


@dataclass
class RejectLimitReport(RejectLimitExceeded):
    """RejectLimitExceeded that carries the run's report for the CLI to show."""

    report: RunReport | None = None


def parse_partition(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--partition {value!r} is not a date", hint="use YYYY-MM-DD, e.g. 2024-01-15") from None


def run(spec: Spec | str | Path, *, partition: str | date | None = None, db: str | None = None,
        base_dir: Path | None = None, force: bool = False, dry_run: bool = False) -> RunReport:
    """Load one (pipeline, partition) and return its report; raises PgstageError subclasses.

    With dry_run, stage and validate as usual, then predict the merge's counts by a read-only
    comparison with the target, which is neither created nor written.
    """
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    day = parse_partition(partition)
    base = base_dir or (spec.path.parent if spec.path else Path.cwd())
    cdc = spec.source.kind == "postgres"
    files = [] if cdc else resolve_files(spec.source.path or "", base, day, allow_missing=spec.source.allow_missing)
    url = resolve_url(db)
    started = time.perf_counter()
    state: dict[str, int] = {}

    def retryable(exc: BaseException) -> bool:
        return isinstance(exc, Transient) or ("connected" in state and isinstance(exc, ConnectionFailed))

    retrying = Retrying(retry=retry_if_exception(retryable), stop=stop_after_attempt(spec.load.max_retries + 1),
                        wait=wait_random_exponential(multiplier=0.5, max=10), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                try:
                    with connect(url) as conn:
                        state["connected"] = 1
                        # A postgres source is one pseudo-file, extracted anew by every attempt.
                        return _run_once(conn, url, spec, [postgres.pseudo_file(spec.source)] if cdc else files,
                                         day.isoformat() if day else None, force, started, state, dry_run)
                except psycopg.Error as exc:  # raised outside execute(), e.g. by a COMMIT
                    raise wrap(exc, "run") from exc
    except (TransientDatabaseError, ConnectionFailed) as exc:
        if "run_id" in state:
            _mark_failed(url, state["run_id"], f"gave up after {spec.load.max_retries} retries: {exc}")
        raise
    raise AssertionError("unreachable")  # pragma: no cover


def _mark_failed(url: str, run_id: int, message: str) -> None:
    """Best effort: the database may still be unreachable; a run left `running` is resumed anyway."""
    try:
        with connect(url) as conn:
            ledger.fail_run(conn, run_id, message)
    except PgstageError:
        pass


def _run_once(conn: psycopg.Connection[Any], url: str, spec: Spec, files: list[SourceFile], part: str | None,
              force: bool, started: float, state: dict[str, int], dry_run: bool = False) -> RunReport:
    ledger.ensure(conn)
    apply_session_settings(conn, spec.load)
    types = transform.resolve_types(conn, spec)
    target.check(conn, spec, types)
    validate.check_references(conn, spec)
    with pipeline_lock(conn, spec.pipeline.name, part):
        if not dry_run:
            indexes.rebuild(conn, spec)      # repair what a killed run may have left dropped
        _drop_tables(conn, ledger.orphan_tables(conn))
        _drop_tables(conn, ledger.finished_duplicate_tables(conn))
        run_id = None if dry_run else ledger.resumable_run(conn, spec.pipeline.name, part)
        if run_id is not None:
            ledger.reopen_run(conn, run_id)
            ledger.discard_unmerged(conn, run_id)
            _drop_tables(conn, ledger.orphan_tables(conn, run_id))
        todo = [f for f in files if force or ledger.loaded_before(conn, spec.pipeline.name, f) is None]
        skipped = tuple(FileReport(f.name, "skipped") for f in files if f not in todo)
        if run_id is None:
            run_id = ledger.start_run(conn, spec.pipeline.name, part, spec.pipeline.target,
                                      str(spec.path) if spec.path else None, dry_run=dry_run,
                                      spec=ledger.spec_document(spec))
        state["run_id"] = run_id
        if not todo and not ledger.batch_counts(conn, run_id):
            why = ("every file was loaded before (use --force to load again)" if files else
                   f"no source file matches {spec.source.path!r}" + (f" for partition {part}" if part else "")
                   + " (source.allow_missing = true)")
            report = RunReport(run_id, spec.pipeline.name, part, "skipped", Counts(), {},
                               time.perf_counter() - started, spec.pipeline.target, skipped, why)
            ledger.finish_run(conn, run_id, "skipped", report.counts, {}, _file_rows(report.files), why)
            return report
        try:
            with Workers(url, spec.load, f"{spec.pipeline.name}:{part or ''}") as pool:
                return _load(conn, pool, spec, types, files, todo, skipped, run_id, part, started, dry_run)
        except BaseException as exc:
            if not conn.closed and not isinstance(exc, (RejectLimitExceeded, Transient)):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                ledger.fail_run(conn, run_id, str(exc) if isinstance(exc, PgstageError) else repr(exc))
            raise
        finally:
            if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                _drop_tables(conn, ledger.orphan_tables(conn, run_id))


def _load(conn: psycopg.Connection[Any], pool: Workers, spec: Spec, types: dict[str, transform.ColumnType],
          files: list[SourceFile], todo: list[SourceFile], skipped: tuple[FileReport, ...], run_id: int,
          part: str | None, started: float, dry_run: bool = False) -> RunReport:
    # Phase 1: stage every remaining batch here while the pool validates the ones already staged;
    # each batch's rejects and checkpoint commit together.
    pending: list[tuple[validate.Checked, bool]] = []     # (batch, is the last batch of its file)
    validating: list[tuple[SourceFile, list[Future[validate.Checked]]]] = []
    ignored: dict[str, tuple[str, ...]] = {}
    found = target.existing_columns(conn, spec)
    seed = known.session_seed(conn, spec) if target.keeps_row_hash(found) else None
    staged = threading.Event()   # set when the last batch is staged: see validate.check
    context = validate.Context(transform.case_collation(conn), found is not None, row_hash_seed=seed,
                               known_rows=bool(seed is not None and found and known.ROW_HASH in found
                                               and known.eligible(spec)), staged=staged)
    duplicates = f"_dup_{run_id}"
    for source in todo:
        file_no = files.index(source)   # stable across attempts, unlike the position in todo
        _, _, ignored[source.name] = stage.header_of(spec, source)
        if ignored[source.name] and spec.source.on_new_fields == "fail":
            raise HeaderMismatch(f"fields the spec does not know: {', '.join(map(repr, ignored[source.name]))}",
                                 location=Location(file=source.name, line=1),
                                 hint="add them to [columns], or set source.on_new_fields = \"ignore\"")
        start = ledger.start_point(conn, run_id, source)
        if start.changed:
            _drop_tables(conn, [duplicates])
        since = ledger.watermark(conn, spec.pipeline.name, source.name) if spec.source.kind == "postgres" else None
        batches = stage.stage_batches(conn, spec, source, file_no=file_no, table_prefix=f"_stg_{run_id}_{file_no}",
                                      start=start, batch_rows=spec.load.batch_rows, since=since,
                                      parallel=spec.load.workers)
        validating.append((source, [pool.submit(partial(_validate, spec=spec, types=types, batch=batch, run_id=run_id,
                                                        context=context, staged=span)) for batch, span in _timed(batches)]))
    staged.set()
    for source, futures in validating:
        file_checked = results(futures)
        pending += [(c, i == len(file_checked) - 1) for i, c in enumerate(file_checked)]
        if not file_checked and not dry_run and spec.source.kind != "postgres":
            # header-only, or every batch merged before the interruption (no rows from a table: the watermark stays)
            with conn.transaction():
                ledger.record_file(conn, spec.pipeline.name, source, run_id)

    per_file = ledger.batch_counts(conn, run_id)
    totals = sum(per_file.values(), Counts())
    limit, most = spec.load.max_reject_ratio, spec.load.max_rejects
    over_ratio = bool(totals.read) and totals.rejected / totals.read > limit
    if over_ratio or (most is not None and totals.rejected > most):
        by_rule = ledger.rejects_by_rule(conn, run_id)
        report = _report(spec, run_id, part, "rejected_threshold", per_file, ignored, skipped, by_rule, started)
        share = f"{totals.rejected} of {totals.read} records rejected ({totals.rejected / max(totals.read, 1):.1%})"
        message = (share + (f", above max_reject_ratio {limit:g}" if over_ratio else f", above max_rejects {most}")
                   + (": nothing was merged" if not dry_run else ": a real run would merge nothing (dry run)"))
        ledger.finish_run(conn, run_id, "rejected_threshold", report.counts, by_rule, _file_rows(report.files), message)
        top = ", ".join(f"{rule} ({n})" for rule, n in list(by_rule.items())[:3])
        samples = "; ".join(f"record {r['record']}: " + ", ".join(f"{x.get('column') or 'record'}.{x['rule']}"
                                                                 for x in r["reasons"])
                            for r in ledger.sample_rejects(conn, run_id, 3))
        raise RejectLimitReport(message + (f"; top rules: {top}" if top else "") + (f"; e.g. {samples}" if samples else ""),
                                hint=f"see `pgstage show {run_id}` for sample rejects; fix the source or raise"
                                     " load.max_reject_ratio", report=report)

    if dry_run:
        by_rule = ledger.rejects_by_rule(conn, run_id)
        return _predict(conn, spec, types, pending, per_file, ignored, skipped, by_rule, run_id, part, started,
                        context.target_exists)

    # Phase 2: merge batch by batch; the merge and its checkpoint commit together.
    with conn.transaction():
        target.ensure(conn, spec, types)
    incoming = sum(c.staged.read - c.staged_rejected for c, _ in pending)
    if indexes.should_rebuild(conn, spec, incoming):
        indexes.drop_for_load(conn, spec, run_id)
    # A key repeated across batches: only the run's winning row is merged. The losers are kept
    # in a logged table until the run succeeds, so a resumed run decides exactly as before.
    beaten = duplicates if ledger.table_exists(conn, duplicates) else None
    if beaten is None and len(pending) > 1 and merge.batches_overlap(conn, spec, types, [c for c, _ in pending]):
        beaten = duplicates
        merge.find_beaten(conn, spec, [c for c, _ in pending], beaten)
    # Each key is merged by one batch at most, so into a target empty now every batch only inserts.
    into_empty = merge.target_is_empty(conn, spec)
    upserts = target.upsert_arbiter(conn, spec)
    # A postgres source's new watermark: the latest change time extracted, committed with the last merge.
    seen = (ledger.seen_watermark(conn, [c.staged for c, _ in pending], postgres.CHANGED_AT)
            if spec.source.kind == "postgres" else None)
    order = InOrder()
    merging = [pool.submit(partial(_merge, spec=spec, types=types, checked=checked, last_of_file=last, run_id=run_id,
                                   beaten=beaten, into_empty=into_empty, upserts=upserts, seen=seen, turn=i,
                                   order=order))
               for i, (checked, last) in enumerate(pending)]
    # Counted while the pool merges (merges leave the rejects alone): on a dirty file the count
    # takes a tenth of a second that the run no longer waits for between validation and merge.
    try:
        by_rule = ledger.rejects_by_rule(conn, run_id)
    finally:
        wait(merging)   # an error here must not leave the pool's merges running behind it
    results(merging)
    if beaten:
        _drop_tables(conn, [beaten])
    indexes.rebuild(conn, spec)
    with conn.transaction():
        merge.resolve_rejects(conn, spec, types, run_id, context.collation)

    per_file = ledger.batch_counts(conn, run_id)
    report = _report(spec, run_id, part, "succeeded", per_file, ignored, skipped, by_rule, started)
    ledger.finish_run(conn, run_id, "succeeded", report.counts, by_rule, _file_rows(report.files))
    return report


def _validate(conn: psycopg.Connection[Any], *, spec: Spec, types: dict[str, transform.ColumnType],
              batch: stage.StagedBatch, run_id: int, context: validate.Context,
              staged: tuple[float, float] | None = None) -> validate.Checked:
    """One batch's validation and checkpoint, in one transaction (a pool job)."""
    with conn.transaction():
        began = time.time()
        checked = validate.check(conn, spec, types, batch, f"_chk_{run_id}_{batch.file_no}_{batch.batch_no}", run_id,
                                 context)
        timings = {"validate": (began, time.time()), **({"stage": staged} if staged else {})}
        ledger.record_batch(conn, run_id, batch, _pre_merge(checked), "validated", timings)
    faults.hit("validate.after")
    return checked


def _merge(conn: psycopg.Connection[Any], *, spec: Spec, types: dict[str, transform.ColumnType],
           checked: validate.Checked, last_of_file: bool, run_id: int, beaten: str | None, into_empty: bool,
           upserts: bool, seen: datetime | None, turn: int, order: InOrder) -> None:
    """One batch's merge and checkpoint (and its file's fingerprint), committed in batch order (a pool job)."""
    try:
        with conn.transaction():
            began = time.time()
            m = merge.merge(conn, spec, types, checked, run_id, beaten, into_empty=into_empty, upserts=upserts)
            merged = time.time()
            pre = _pre_merge(checked)
            counts = Counts(read=pre.read, rejected=pre.rejected, valid=pre.valid, duplicate=pre.valid - m.distinct,
                            inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale,
                            deleted=m.deleted)
            ledger.record_batch(conn, run_id, checked.staged, counts, "merged", {"merge": (began, merged)})
            if last_of_file and spec.source.kind == "postgres":
                if seen is not None:
                    ledger.record_watermark(conn, spec.pipeline.name, checked.staged.source.name, seen, run_id)
            elif last_of_file:
                ledger.record_file(conn, spec.pipeline.name, checked.staged.source, run_id)
            order.wait(turn)
            faults.hit("merge.commit")
        faults.hit("merge.after")
    except BaseException:
        order.failed()   # the batches after this one roll back: a failed run stops where it failed
        raise
    order.committed(turn)
    _drop_tables(conn, [checked.staged.table, checked.table])


def _predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, transform.ColumnType],
             pending: list[tuple[validate.Checked, bool]], per_file: dict[str, Counts],
             ignored: dict[str, tuple[str, ...]], skipped: tuple[FileReport, ...], by_rule: dict[str, int],
             run_id: int, part: str | None, started: float, target_exists: bool) -> RunReport:
    """The dry run's phase 2: the merge's counts forecast read-only, and the SQL it would run."""
    beaten = None
    if len(pending) > 1 and merge.batches_overlap(conn, spec, types, [c for c, _ in pending]):
        beaten = f"_dup_{run_id}"
        merge.find_beaten(conn, spec, [c for c, _ in pending], beaten)
    predicted: dict[str, Counts] = {}
    for checked, _ in pending:
        m = merge.predict(conn, spec, types, checked, beaten, target_exists)
        pre = _pre_merge(checked)
        counts = Counts(read=pre.read, rejected=pre.rejected, valid=pre.valid, duplicate=pre.valid - m.distinct,
                        inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale,
                        deleted=m.deleted)
        name = checked.staged.source.name
        predicted[name] = predicted.get(name, Counts()) + counts
    merge_sql = (merge.build_merge(spec, types, pending[0][0], run_id, beaten).as_string(conn) if pending else None)
    if beaten:
        _drop_tables(conn, [beaten])
    report = _report(spec, run_id, part, "succeeded", {**per_file, **predicted}, ignored, skipped, by_rule, started)
    report = replace(report, dry_run=True, merge_sql=merge_sql,
                     sample_rejects=tuple(ledger.sample_rejects(conn, run_id, 5)),
                     message="dry run: nothing was written to the target; the counts are a forecast")
    ledger.finish_run(conn, run_id, "succeeded", report.counts, by_rule, _file_rows(report.files), report.message)
    return report


def _report(spec: Spec, run_id: int, part: str | None, status: str, per_file: dict[str, Counts],
            ignored: dict[str, tuple[str, ...]], skipped: tuple[FileReport, ...], by_rule: dict[str, int],
            started: float) -> RunReport:
    file_status = "loaded" if status == "succeeded" else "rejected"
    files = tuple(FileReport(name, file_status, counts, ignored.get(name, ())) for name, counts in per_file.items())
    totals = sum(per_file.values(), Counts())
    return RunReport(run_id, spec.pipeline.name, part, status, totals, by_rule, time.perf_counter() - started,
                     spec.pipeline.target, (*files, *skipped))


def _timed(batches: Iterator[stage.StagedBatch]) -> Iterator[tuple[stage.StagedBatch, tuple[float, float]]]:
    """Each batch with when its staging began and ended (Unix seconds), for the report's timeline."""
    began = time.time()
    for batch in batches:
        ended = time.time()
        yield batch, (began, ended)
        began = time.time()


def _pre_merge(c: validate.Checked) -> Counts:
    return Counts(read=c.staged.read, rejected=c.staged_rejected, valid=c.staged.read - c.staged_rejected)


def _drop_tables(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    for table in tables:
        stage.drop(conn, table)


def _file_rows(files: tuple[FileReport, ...]) -> list[dict[str, Any]]:
    return [{"path": f.path, "status": f.status, "rows": f.counts.as_dict(), "ignored_fields": list(f.ignored_fields)}
            for f in files]
