"""Phase 1 of a run and the checks that follow it (SPEC §4): everything before the target is written.

`_prepare` and `_recover` before and under the pipeline lock, then `_stage_and_validate` (this
session stages, the pool validates), `_enforce_reject_limit`, `_judge_volume` and, for a dry run,
`_predict`. Nothing here writes the target, except the early DELETE of a replace_partition swap,
which stays uncommitted until its merge (pipeline/merge/early_delete.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import psycopg

from pgstage import faults, indexes, resolved
from pgstage.errors import HeaderMismatch, Location
from pgstage.names import ROW_HASH, checked_table, duplicates_table, staged_prefix
from pgstage.ops import logs
from pgstage.pipeline import ledger, merge, transform
from pgstage.pipeline.extract import SourceFile
from pgstage.report import Counts, FileReport, RunReport
from pgstage.run.merge_batches import _as_of
from pgstage.run.state import (AnomalyReport, Load, RejectLimitReport, RunContext, Validated, _drop_tables, _event,
                               _file_rows, _merged, _pre_merge, _report)
from pgstage.safety import apply_session_settings
from pgstage.spec import Spec

if TYPE_CHECKING:   # imported by the phases that use them: a run whose files were all loaded before needs none
    from concurrent.futures import Future

    from pgstage.pipeline import partition, stage, validate
    from pgstage.pipeline.merge.early_delete import EarlyDelete
    from pgstage.run.early_merge import EarlyMerge, Turns
    from pgstage.throttle import Throttle


def _prepare(conn: psycopg.Connection[Any], ctx: RunContext, memo: resolved.Memo | None = None) -> resolved.Resolved:
    """Everything that can refuse the run before it takes the lock: the spec's types against the server and
    target, the referenced tables (pgstage/resolved.py; with a `memo`, one query when no DDL touched them)."""
    if not ctx.ledger_ready:
        ledger.ensure(conn)
    apply_session_settings(conn, ctx.spec.load)
    return resolved.resolve(conn, ctx.spec, memo)


def _recover(conn: psycopg.Connection[Any], ctx: RunContext
             ) -> tuple[int, tuple[SourceFile, ...], tuple[SourceFile, ...], tuple[FileReport, ...]]:
    """Put back what a killed run left, resume its run id or start one; which sources are still to load."""
    spec = ctx.spec
    if not ctx.dry_run:
        indexes.rebuild(conn, spec)      # repair what a killed run may have left dropped
    _drop_tables(conn, ledger.orphan_tables(conn))
    _drop_tables(conn, ledger.finished_duplicate_tables(conn))
    # Before a run is reopened or started: a file whose path the ledger holds waits here for its digest
    # (pipeline/extract/digest.py), and a file that changed under the run fails it with no run left `running`.
    sources = ctx.sources()
    todo = tuple(f for f in sources if ctx.force or ledger.loaded_before(conn, spec.pipeline.name, f) is None)
    run_id = None if ctx.dry_run else ledger.resumable_run(conn, spec.pipeline.name, ctx.partition)
    if run_id is not None:
        ledger.reopen_run(conn, run_id)
        ledger.discard_unmerged(conn, run_id)
        _drop_tables(conn, ledger.orphan_tables(conn, run_id))
    skipped = tuple(FileReport(f.name, "skipped") for f in sources if f not in todo)
    resumed = run_id is not None
    if run_id is None:
        run_id = ledger.start_run(conn, spec.pipeline.name, ctx.partition, spec.pipeline.target,
                                  str(spec.path) if spec.path else None, dry_run=ctx.dry_run,
                                  spec=ledger.spec_document(spec))
    fields = {"run_id": run_id, "pipeline": spec.pipeline.name, "partition": ctx.partition}
    logs.emit("run resumed" if resumed else "run started", **fields, files=len(sources), dry_run=ctx.dry_run)
    for report in skipped:
        logs.emit("file skipped", **fields, file=report.path, why="loaded before (same path, same bytes)")
    return run_id, sources, todo, skipped


def _skip(conn: psycopg.Connection[Any], ctx: RunContext, run_id: int, skipped: tuple[FileReport, ...]) -> RunReport:
    """Nothing to load: close the run as skipped, saying why."""
    spec, part = ctx.spec, ctx.partition
    why = ("every file was loaded before (use --force to load again)" if ctx.files else
           f"no source file matches {spec.source.path!r}" + (f" for partition {part}" if part else "")
           + " (source.allow_missing = true)")
    report = RunReport(run_id, spec.pipeline.name, part, "skipped", Counts(), {},
                       time.perf_counter() - ctx.started, spec.pipeline.target, skipped, why)
    ledger.finish_run(conn, run_id, "skipped", report.counts, {}, _file_rows(report.files), why)
    return report


def _validation_context(ctx: RunContext, facts: resolved.Resolved) -> validate.Context:
    """What every batch's validation shares: the target's state, the known-rows shortcut (pipeline/known.py)
    and the partition a replace_partition run keeps its records to."""
    from pgstage.pipeline import known, validate

    found, seed = facts.found, facts.seed
    return validate.Context(facts.collation, found is not None, row_hash_seed=seed,
                            known_rows=bool(seed is not None and found and ROW_HASH in found
                                            and known.eligible(ctx.spec)),
                            staged=threading.Event(),   # set when the last batch is staged: see validate.check
                            partition=_window(ctx, facts.types))


def _window(ctx: RunContext, types: dict[str, transform.ColumnType]) -> partition.Window | None:
    """The partition a replace_partition run replaces (and keeps its records to); None for other strategies."""
    if not merge.replaces_partition(ctx.spec) or ctx.partition is None:
        return None
    from pgstage.pipeline import partition

    return partition.window(ctx.spec, types, ctx.partition)


def _early_delete(ctx: RunContext, facts: resolved.Resolved, validation: validate.Context, throttle: Throttle,
                  run_id: int, *, pipelined: bool) -> EarlyDelete | None:
    """A replace_partition run's early DELETE (merge/early_delete.py), not started yet; None where it may not run."""
    from pgstage.pipeline.merge.early_delete import EarlyDelete, eligible as early_delete_eligible

    w = validation.partition
    if w is None or not early_delete_eligible(ctx.spec, w, dry_run=ctx.dry_run, target_complete=facts.target_complete(ctx.spec),
                                              throttled=throttle.limits.active, pipelined=pipelined):
        return None
    return EarlyDelete(ctx.url, ctx.spec, w, partial(logs.emit, run_id=run_id, pipeline=ctx.spec.pipeline.name,
                                                     partition=ctx.partition))


def _early_merge(conn: psycopg.Connection[Any], ctx: RunContext, facts: resolved.Resolved, throttle: Throttle,
                 run_id: int, *, pipelined: bool) -> EarlyMerge | None:
    """The run's early merges (run/early_merge.py), not begun yet; None where the first batches may not merge early."""
    from pgstage.run import early_merge

    if not early_merge.eligible(ctx.spec, dry_run=ctx.dry_run, cdc=ctx.cdc, throttled=throttle.limits.active,
                                pipelined=pipelined, target_complete=facts.target_complete(ctx.spec)):
        return None
    if ledger.table_exists(conn, duplicates_table(run_id)):   # a resumed run that set cross-batch losers aside
        return None
    return early_merge.EarlyMerge(ctx.url, ctx.spec, facts.types, run_id,
                                  partial(logs.emit, run_id=run_id, pipeline=ctx.spec.pipeline.name,
                                          partition=ctx.partition))


def _start_early(load: Load, staged_rows: int) -> None:
    """Every batch is staged: begin the swap's DELETE while the pool validates, unless the merge plan
    will drop the target's indexes for this load (DDL that would wait on the DELETE's lock)."""
    if load.early is not None and staged_rows and not indexes.should_rebuild(load.conn, load.spec, staged_rows):
        load.early.start()


def _stage_and_validate(load: Load) -> Validated:
    """Phase 1: stage every remaining batch here while the pool validates the ones already staged.

    Each batch's rejects and checkpoint commit together.
    """
    from pgstage.pipeline import stage, two_streams
    from pgstage.workers import results

    conn, spec = load.conn, load.spec
    validating: list[tuple[SourceFile, list[Future[validate.Checked]]]] = []
    ignored: dict[str, tuple[str, ...]] = {}
    staged_rows = turn = 0
    # With early merges, the batches validate one at a time: the first is done (and merging) while the next validates.
    turns = load.early_merge.turns if load.early_merge is not None else None
    for source in load.todo:
        file_no = load.sources.index(source)   # stable across attempts, unlike the position in todo
        _, _, ignored[source.name] = stage.header_of(spec, source)
        if ignored[source.name] and spec.source.on_new_fields == "fail":
            raise HeaderMismatch(f"fields the spec does not know: {', '.join(map(repr, ignored[source.name]))}",
                                 location=Location(file=source.name, line=1),
                                 hint="add them to [columns], or set source.on_new_fields = \"ignore\"")
        start = ledger.start_point(conn, load.run_id, source)
        if start.changed:
            _drop_tables(conn, [load.duplicates])
        since = ledger.watermark(conn, spec.pipeline.name, source.name) if load.run.cdc else None
        _event(load, "file started", file=source.name, bytes=source.size, from_record=start.record)
        # A file's first two batches may stage at once, on this session and a pool one (pipeline/two_streams.py).
        staging = two_streams.stage_file(conn, load.pool, spec, source, file_no=file_no,
                                         table_prefix=staged_prefix(load.run_id, file_no), start=start,
                                         batch_rows=spec.load.batch_rows, since=since, parallel=_spread(spec),
                                         pause=partial(_pause_copy, load, source.name), event=partial(_event, load))
        futures = []
        for batch, span in _staged(load, staging):
            staged_rows += batch.read
            futures.append(load.pool.submit(partial(_validate_batch, load=load, batch=batch, staged=span,
                                                    turns=turns, turn=turn)))
            turn += 1
        validating.append((source, futures))
    assert load.validation.staged is not None
    load.validation.staged.set()
    _start_early(load, staged_rows)
    if load.early_merge is not None:
        load.early_merge.begin(conn, [(f, i == len(fs) - 1) for _, fs in validating for i, f in enumerate(fs)],
                               staged_rows)
    pending: list[tuple[validate.Checked, bool]] = []
    for source, futures in validating:
        file_checked = results(futures)
        pending += [(c, i == len(file_checked) - 1) for i, c in enumerate(file_checked)]
        if not file_checked and not load.run.dry_run and not load.run.cdc:
            # header-only, or every batch merged before the interruption (no rows from a table: the watermark stays)
            with conn.transaction():
                ledger.record_file(conn, spec.pipeline.name, source, load.run_id)
    return Validated(tuple(pending), ledger.batch_counts(conn, load.run_id), ignored)


def _staged(load: Load, batches: Iterator[stage.StagedBatch]) -> Iterator[tuple[stage.StagedBatch, tuple[float, float]]]:
    """The batches as staged, each logged as its COPY ends, with when its staging began and ended
    (Unix seconds, for the report's timeline)."""
    began = time.time()
    for batch in batches:
        began, ended = batch.staging or (began, time.time())
        _event(load, "batch staged", file=batch.source.name, batch=batch.batch_no, read=batch.read,
               quarantined=len(batch.quarantined), byte_end=batch.byte_end, seconds=round(ended - began, 3))
        yield batch, (began, ended)
        began = time.time()


def _pause_copy(load: Load, file: str, session: psycopg.Connection[Any]) -> None:
    """The throttle before a COPY window, on whichever session stages it (pipeline/two_streams.py)."""
    load.throttle.wait(session, f"COPY of {file}")


def _throttle(ctx: RunContext, run_id: int) -> Throttle:
    """The attempt's throttle: its pauses are run events, and a long one alerts (pgstage/ops/paused.py)."""
    from pgstage.ops.alerts import seconds as alert_seconds
    from pgstage.ops.paused import long_pause_alert
    from pgstage.throttle import Limits, Throttle

    return Throttle(Limits.of(ctx.spec.load), run_id, pipeline=ctx.spec.pipeline.name, partition=ctx.partition,
                    alert_after_s=alert_seconds(ctx.spec.alerts.paused_after),
                    on_long_pause=long_pause_alert(ctx.spec, run_id, ctx.partition))


def _validate_batch(session: psycopg.Connection[Any], *, load: Load, batch: stage.StagedBatch,
                    staged: tuple[float, float] | None = None, turns: Turns | None = None,
                    turn: int = 0) -> validate.Checked:
    """One batch's validation and checkpoint, in one transaction (a pool job, on its own session).

    `turns`: for early merges, validations one at a time in batch order (`turn`)."""
    from pgstage.pipeline import validate

    started = time.perf_counter()
    with turns.validation(turn) if turns is not None else nullcontext():
        load.throttle.wait(session, f"validation of {batch.source.name} batch {batch.batch_no}")
        context = load.validation
        if load.early_merge is not None and load.early_merge.key_dropped:
            # The target was empty and holds only the early session's uncommitted rows: no record is known, and
            # without the key's index the known-rows sample would scan those rows once per sampled key.
            context = replace(context, known_rows=False)
        with session.transaction():
            began = time.time()
            checked = validate.check(session, load.spec, load.types, batch,
                                     checked_table(load.run_id, batch.file_no, batch.batch_no), load.run_id,
                                     context)
            timings = {"validate": (began, time.time()), **({"stage": staged} if staged else {})}
            ledger.record_batch(session, load.run_id, batch, _pre_merge(checked), "validated", timings)
    faults.hit("validate.after")
    counts = _pre_merge(checked)
    _event(load, "batch validated", file=batch.source.name, batch=batch.batch_no, read=counts.read,
           rejected=counts.rejected, valid=counts.valid, seconds=round(time.perf_counter() - started, 3))
    return checked


def _enforce_reject_limit(load: Load, validated: Validated) -> None:
    """Above `max_reject_ratio` or `max_rejects` over the whole run, close it and merge nothing."""
    conn, spec, run_id = load.conn, load.spec, load.run_id
    totals = sum(validated.per_file.values(), Counts())
    limit, most = spec.load.max_reject_ratio, spec.load.max_rejects
    over_ratio = bool(totals.read) and totals.rejected / totals.read > limit
    if not (over_ratio or (most is not None and totals.rejected > most)):
        return
    by_rule = ledger.rejects_by_rule(conn, run_id)
    report = _report(load, "rejected_threshold", validated.per_file, validated.ignored, by_rule)
    _event(load, "threshold exceeded", read=totals.read, rejected=totals.rejected, max_reject_ratio=limit,
           max_rejects=most, rejects_by_rule=by_rule)
    share = f"{totals.rejected} of {totals.read} records rejected ({totals.rejected / max(totals.read, 1):.1%})"
    message = (share + (f", above max_reject_ratio {limit:g}" if over_ratio else f", above max_rejects {most}")
               + (": nothing was merged" if not load.run.dry_run else ": a real run would merge nothing (dry run)"))
    ledger.finish_run(conn, run_id, "rejected_threshold", report.counts, by_rule, _file_rows(report.files), message)
    top = ", ".join(f"{rule} ({n})" for rule, n in list(by_rule.items())[:3])
    samples = "; ".join(f"record {r['record']}: " + ", ".join(f"{x.get('column') or 'record'}.{x['rule']}"
                                                             for x in r["reasons"])
                        for r in ledger.sample_rejects(conn, run_id, 3))
    raise RejectLimitReport(message + (f"; top rules: {top}" if top else "") + (f"; e.g. {samples}" if samples else ""),
                            hint=f"see `pgstage show {run_id}` for sample rejects; fix the source or raise"
                                 " load.max_reject_ratio", report=report)


def _judge_volume(load: Load, validated: Validated) -> dict[str, Any] | None:
    """The run's volume against its history, before anything is merged (ops/anomalies.py).

    A flagged run with `[anomaly] action = "block"` is closed `blocked` and merges nothing (exit 5).
    """
    from pgstage.ops import anomalies

    conn, spec, run_id = load.conn, load.spec, load.run_id
    if spec.anomaly.action == "off":
        return None
    totals = sum(validated.per_file.values(), Counts())
    verdict = anomalies.assess(conn, spec.pipeline.name, load.run.partition, run_id, totals.read, totals.rejected,
                               spec.anomaly)
    _event(load, "anomaly" if verdict.flagged else "volume judged", verdict=verdict.verdict, reason=verdict.reason,
           read=verdict.read, expected=verdict.expected, score=verdict.score, action=spec.anomaly.action)
    if not (verdict.flagged and spec.anomaly.action == "block"):
        return verdict.as_dict()
    by_rule = ledger.rejects_by_rule(conn, run_id)
    report = replace(_report(load, "blocked", validated.per_file, validated.ignored, by_rule), anomaly=verdict.as_dict())
    message = f"volume anomaly: {verdict.reason}: nothing was merged"
    report = replace(report, message=message)
    ledger.finish_run(conn, run_id, "blocked", report.counts, by_rule, _file_rows(report.files), message)
    raise AnomalyReport(message, hint=f"if the volume is genuine, `pgstage anomalies --accept {run_id}` and run again;"
                                      " `[anomaly] action = \"warn\"` merges and alerts instead", report=report)


def _predict(load: Load, validated: Validated) -> RunReport:
    """The dry run's phase 2: the merge's counts forecast read-only, and the SQL it would run."""
    conn, spec, run_id = load.conn, load.spec, load.run_id
    by_rule = ledger.rejects_by_rule(conn, run_id)
    beaten = None
    if len(validated.pending) > 1 and merge.batches_overlap(conn, spec, load.types, validated.batches):
        beaten = load.duplicates
        merge.find_beaten(conn, spec, validated.batches, beaten)
    predicted: dict[str, Counts] = {}
    as_of = _as_of(load)
    for checked in validated.batches:
        m = merge.predict(conn, spec, load.types, checked, beaten, load.validation.target_exists, as_of)
        name = checked.staged.source.name
        predicted[name] = predicted.get(name, Counts()) + _merged(checked, m)
    w = load.validation.partition
    if w is not None and validated.pending:   # replace_partition: the swap removes the partition's rows once
        name = validated.batches[-1].staged.source.name
        gone = merge.replace_partition.predict_deleted(conn, spec, w, load.validation.target_exists)
        predicted[name] = replace(predicted[name], deleted=predicted[name].deleted + gone)
    if spec.pipeline.strategy == "append":   # a file with rows in the target would have them replaced
        for name in {c.staged.source.name for c in validated.batches}:
            gone = merge.append.predict_deleted(conn, spec, name, load.validation.target_exists)
            predicted[name] = replace(predicted[name], deleted=predicted[name].deleted + gone)
    if as_of is not None and validated.pending:   # scd2: current keys the snapshot lacks
        name = validated.batches[-1].staged.source.name
        gone = merge.scd2.predict_missing(conn, spec, validated.batches, as_of, load.validation.target_exists)
        predicted[name] = replace(predicted[name], deleted=predicted[name].deleted + gone)
    merge_sql = (merge.build_merge(spec, load.types, validated.batches[0], run_id, beaten).as_string(conn)
                 if validated.pending and spec.pipeline.strategy in ("insert_only", "upsert", "upsert_if_newer")
                 else None)
    if beaten:
        _drop_tables(conn, [beaten])
    report = _report(load, "succeeded", {**validated.per_file, **predicted}, validated.ignored, by_rule)
    report = replace(report, dry_run=True, merge_sql=merge_sql,
                     sample_rejects=tuple(ledger.sample_rejects(conn, run_id, 5)),
                     message="dry run: nothing was written to the target; the counts are a forecast")
    ledger.finish_run(conn, run_id, "succeeded", report.counts, by_rule, _file_rows(report.files), report.message)
    return report


def _spread(spec: Spec) -> int:
    """Over how many batches a file that fits in one is cut, so the pool's sessions validate it at once.

    Not for replace_partition, where every batch but the last is written twice (to the
    collector, then to the target), nor for scd2, whose two batches' merges contend for the same
    index pages (1M rows: 14.0 s cut in two against 9.6 s in one). One batch is validated on one
    session, whose statements still run as parallel queries.
    """
    return 1 if merge.replaces_partition(spec) or spec.pipeline.strategy == "scd2" else spec.load.workers
