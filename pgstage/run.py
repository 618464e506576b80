"""Read this first: one run of a pipeline, top to bottom as in SPEC §4.

`run()` parses what it is given into a frozen `RunContext`, then retries `_attempt` on
transient faults. One attempt is a row of named phases, in this order:

    _prepare            ledger, session settings, column types, target and references checked
    pipeline_lock       one run per (pipeline, partition)
    _recover            rebuild indexes a killed run dropped, drop its tables, resume its run id
    _stage_and_validate phase 1, per file and batch: extract + stage → validate (+ transform) → checkpoint
    _enforce_reject_limit  the reject threshold over the whole run: nothing merged above it
    _judge_volume       the run's volume against its history (ops/anomalies.py): block → nothing merged
    _predict            (dry run) phase 2 forecast read-only, then stop
    _plan_merge         target created, indexes dropped for a large load, cross-batch losers set aside
    _merge_batches      phase 2, per batch, one transaction each: merge + checkpoint (+ the file's
                        fingerprint with its last batch)
    _finish             indexes rebuilt, rejects resolved, run closed → report

Around the attempts, `run()` hands the outcome to pgstage/ops/outcome.py (log, reconcile,
alerts), which never changes it; phases report their events through `_event` (ops/logs.py).

Each phase takes the attempt's frozen `Load` and returns what the next one needs, so a new
merge strategy belongs in `_merge_batches` (and pipeline/merge.py), a throttle between
batches in the pool jobs `_validate_batch` / `_merge_batch`, an alert hook around `_finish`.

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
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from datetime import date, datetime, time as day_time, timedelta, timezone
from zoneinfo import ZoneInfo
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import psycopg
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pgstage import faults, indexes, resolved, target
from pgstage.db import connect, resolve_url, wrap
from pgstage.errors import (AnomalyBlocked, ConnectionFailed, HeaderMismatch, Location, PgstageError, RejectLimitExceeded,
                            Transient, TransientDatabaseError, UsageError)
from pgstage.names import ROW_HASH, SOURCE_CHANGED_AT, checked_table, duplicates_table, staged_prefix
from pgstage.ops import anomalies, logs, outcome
from pgstage.ops.alerts import seconds as alert_seconds
from pgstage.ops.paused import long_pause_alert
from pgstage.pipeline import chunks, known, ledger, merge, partition, stage, transform, two_streams, validate
from pgstage.pipeline.extract import SourceFile, postgres, resolve_files
from pgstage.pipeline.merge.early_delete import EarlyDelete, eligible as early_delete_eligible
from pgstage.report import Counts, FileReport, RunReport, key_warnings
from pgstage.safety import apply_session_settings, pipeline_lock
from pgstage.throttle import Limits, Throttle, throttled_seconds
from pgstage.spec import Spec, load_spec
from pgstage.workers import InOrder, Workers, results


@dataclass
class RejectLimitReport(RejectLimitExceeded):
    """RejectLimitExceeded that carries the run's report for the CLI to show."""

    report: RunReport | None = None


@dataclass
class AnomalyReport(AnomalyBlocked):
    """AnomalyBlocked that carries the run's report (and its verdict) for the CLI to show."""

    report: RunReport | None = None


class Turn(Protocol):
    """When a run may merge: a backfill lets a pipeline's next day stage and validate while the day
    before it merges, and holds it here until that day has finished (pgstage/backfill/turns.py)."""

    def started(self) -> None:
        """The run has its row in the ledger (a later day's run may start after it)."""

    def wait(self) -> None:
        """Return when the run may go on to its volume check and merge."""


def parse_partition(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--partition {value!r} is not a date", hint="use YYYY-MM-DD, e.g. 2024-01-15") from None


def parse_as_of(value: str | datetime | None) -> datetime | None:
    """`--as-of`: an ISO timestamp; without an offset it is UTC."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise UsageError(f"--as-of {value!r} is not a timestamp",
                             hint="use ISO 8601, e.g. 2024-01-15T23:59:59+00:00 or 2024-01-15") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RunContext:
    """What a run is asked to do, parsed once at its start; every attempt reads it, none changes it."""

    spec: Spec
    url: str
    partition: str | None           # the ISO day, as the ledger and the lock key spell it
    files: tuple[SourceFile, ...]   # the source files in load order; none for a postgres source
    force: bool
    dry_run: bool
    started: float                  # perf_counter at the start: the report's duration
    as_of: datetime | None = None   # scd2: --as-of, valid_from of rows without a version
    ledger_ready: bool = False      # the caller ensured the ledger (see `run`)

    @property
    def cdc(self) -> bool:
        return self.spec.source.kind == "postgres"

    def sources(self) -> tuple[SourceFile, ...]:
        """This attempt's sources: a postgres source is one pseudo-file, extracted anew by every attempt."""
        return (postgres.pseudo_file(self.spec.source),) if self.cdc else self.files


@dataclass(frozen=True)
class Load:
    """One attempt under the pipeline lock: the run context plus what the session found.

    `conn` is the main session, which stages; pool jobs get their own session and must not use it.
    """

    run: RunContext
    conn: psycopg.Connection[Any]
    pool: Workers
    run_id: int
    facts: resolved.Resolved            # column types, target and references as `_prepare` found them
    sources: tuple[SourceFile, ...]     # every source of the attempt; file numbers index it
    todo: tuple[SourceFile, ...]        # those not loaded before (or all of them with --force)
    skipped: tuple[FileReport, ...]
    validation: validate.Context
    throttle: Throttle                  # asked before each COPY window, validation and merge chunk
    early: EarlyDelete | None = None    # replace_partition: the swap's DELETE, begun while the last batch validates

    @property
    def spec(self) -> Spec:
        return self.run.spec

    @property
    def types(self) -> dict[str, transform.ColumnType]:
        return self.facts.types

    @property
    def one_merge_at_a_time(self) -> bool:
        """Chunked merges take their turn before their first chunk, not after their writes: no merge
        then sits open, holding its rows, while an earlier one commits chunks or pauses between them."""
        return chunks.chunkable(self.spec)

    @property
    def merges_open_in_order(self) -> bool:
        """A throttled (unchunked) merge opens its transaction only after the batch before it opened its
        own, which it does past its last throttle check: no merge then sits open, holding its rows,
        while an earlier one is paused, yet the merges still run side by side as unthrottled ones do
        (one at a time, an incremental load of two batches took 20% longer with every check on)."""
        return self.throttle.limits.active and not self.one_merge_at_a_time

    @property
    def duplicates(self) -> str:
        """The run's table of cross-batch losers (kept until the run succeeds, see `_plan_merge`)."""
        return duplicates_table(self.run_id)


@dataclass(frozen=True)
class Validated:
    """Phase 1's result: every batch validated and checkpointed, nothing merged yet."""

    pending: tuple[tuple[validate.Checked, bool], ...]   # (batch, is the last batch of its file), in merge order
    per_file: dict[str, Counts]
    ignored: dict[str, tuple[str, ...]]                  # fields of each file the spec does not know

    @property
    def batches(self) -> list[validate.Checked]:
        return [checked for checked, _ in self.pending]


@dataclass(frozen=True)
class MergePlan:
    """What every batch's merge shares, decided once before the first one starts."""

    beaten: str | None          # the table of cross-batch losers, if batches repeat a key
    into_empty: bool            # each key is merged by one batch at most: into an empty target, inserts only
    upserts: bool               # the target has a unique index on the key that ON CONFLICT can use
    seen: datetime | None       # a postgres source's new watermark, committed with the last merge
    batches: int = 0            # how many batches merge (replace_partition swaps with the last)
    as_of: datetime | None = None   # scd2: the run's as-of time (see `_as_of`)
    replaced: frozenset[str] = frozenset()   # append: files whose earlier rows this run replaces
    early: EarlyDelete | None = None   # replace_partition: the swap's transaction, its DELETE begun (see `_start_early`)


def run(spec: Spec | str | Path, *, partition: str | date | None = None, db: str | None = None,
        base_dir: Path | None = None, force: bool = False, dry_run: bool = False,
        as_of: str | datetime | None = None, conn: psycopg.Connection[Any] | None = None,
        workers: Workers | None = None, ledger_ready: bool = False, memo: resolved.Memo | None = None,
        turn: Turn | None = None) -> RunReport:
    """Load one (pipeline, partition) and return its report; raises PgstageError subclasses.

    `as_of` (scd2): the time a snapshot is valid from, for rows without a version; default the
    partition's day end, else the run's start.

    With dry_run, stage and validate as usual, then predict the merge's counts by a read-only
    comparison with the target, which is neither created nor written. `conn`: an open
    autocommit session on `db` for the first attempt (a backfill reuses one per job instead of
    connecting for every day); it is left open, and a retry connects anew. `workers`: likewise a
    pool of sessions for the batches, opened for this spec's load settings and kept open by the
    caller from run to run (a backfill's job saves opening `load.workers` sessions a day).
    `ledger_ready`: the caller created or upgraded the ledger on `db` already (a backfill does it
    once, not once a day: some twenty-five statements a run). `memo`: what the previous run of this
    spec on this database resolved (types, target, references), reused when one catalog query
    says no DDL has touched them since (pgstage/resolved.py; a backfill keeps one per spec).
    `turn`: told when the run has started, and asked before the run's volume check and merge
    (nothing before them reads what an earlier run writes; see `Turn`).
    """
    ctx = _context(spec, partition, db, base_dir, force, dry_run, as_of, ledger_ready)
    try:
        report = _attempts(ctx, conn, workers, memo, turn)
    except BaseException as exc:
        outcome.failed(ctx.spec, ctx.url, ctx.partition, exc, time.perf_counter() - ctx.started,
                       time.time() - (time.perf_counter() - ctx.started))
        raise
    return outcome.finished(ctx.spec, ctx.url, report, base_dir)


def _attempts(ctx: RunContext, conn: psycopg.Connection[Any] | None = None,
              workers: Workers | None = None, memo: resolved.Memo | None = None,
              turn: Turn | None = None) -> RunReport:
    """The attempts of one run: transient faults are retried, each attempt resuming the last."""
    # The first connection is made outside the retries: a wrong URL or a server that is down
    # fails at once. Once a run has started, a lost connection is a restart worth waiting for.
    first: psycopg.Connection[Any] | None = conn or connect(ctx.url)
    retrying = Retrying(retry=retry_if_exception(lambda exc: isinstance(exc, (Transient, ConnectionFailed))),
                        stop=stop_after_attempt(ctx.spec.load.max_retries + 1),
                        wait=wait_random_exponential(multiplier=0.5, max=10), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                session, first = first or connect(ctx.url), None
                pool, workers = workers, None   # like `conn`, the caller's pool serves the first attempt only
                try:
                    if session is conn:   # the caller's: not closed here
                        return _attempt(session, ctx, pool, memo, turn)
                    with session:
                        return _attempt(session, ctx, pool, memo, turn)
                except psycopg.Error as exc:  # raised outside execute(), e.g. by a COMMIT
                    raise wrap(exc, "run") from exc
    except (TransientDatabaseError, ConnectionFailed) as exc:
        _mark_failed(ctx, f"gave up after {ctx.spec.load.max_retries} retries: {exc}")
        raise
    finally:
        if first is not None and first is not conn:
            first.close()
    raise AssertionError("unreachable")  # pragma: no cover


def _context(spec: Spec | str | Path, partition: str | date | None, db: str | None, base_dir: Path | None,
             force: bool, dry_run: bool, as_of: str | datetime | None = None,
             ledger_ready: bool = False) -> RunContext:
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    day = parse_partition(partition)
    if day is None and merge.replaces_partition(spec):
        raise UsageError(f"pipeline {spec.pipeline.name} replaces a partition: say which one with --partition DATE",
                         hint="e.g. pgstage run SPEC --partition 2024-01-15 (partition=\"2024-01-15\" in the library)")
    when = parse_as_of(as_of)
    if when is not None and spec.pipeline.strategy != "scd2":
        raise UsageError(f"--as-of applies to strategy scd2; pipeline {spec.pipeline.name} is {spec.pipeline.strategy}")
    base = base_dir or (spec.path.parent if spec.path else Path.cwd())
    files = () if spec.source.kind == "postgres" else tuple(
        resolve_files(spec.source.path or "", base, day, allow_missing=spec.source.allow_missing))
    return RunContext(spec, resolve_url(db), day.isoformat() if day else None, files, force, dry_run,
                      time.perf_counter(), when, ledger_ready)


def _mark_failed(ctx: RunContext, message: str) -> None:
    """Best effort: the database may still be unreachable; a run left `running` is resumed anyway."""
    try:
        with connect(ctx.url) as conn:
            ledger.fail_own_run(conn, ctx.spec.pipeline.name, ctx.partition, message)
    except PgstageError:
        pass


def _attempt(conn: psycopg.Connection[Any], ctx: RunContext, workers: Workers | None = None,
             memo: resolved.Memo | None = None, turn: Turn | None = None) -> RunReport:
    """One try at the whole run, on one session; a retry starts here again and resumes the run."""
    facts = _prepare(conn, ctx, memo)
    with pipeline_lock(conn, ctx.spec.pipeline.name, ctx.partition):
        run_id, sources, todo, skipped = _recover(conn, ctx)
        if turn is not None:
            turn.started()
        if not todo and not ledger.batch_counts(conn, run_id):
            return _skip(conn, ctx, run_id, skipped)
        early: EarlyDelete | None = None
        try:
            with (nullcontext(workers) if workers is not None
                  else Workers(ctx.url, ctx.spec.load, f"{ctx.spec.pipeline.name}:{ctx.partition or ''}")) as pool:
                facts = resolved.with_target(conn, ctx.spec, facts)   # a lone run reads it now, under the lock
                validation, throttle = _validation_context(ctx, facts), _throttle(ctx, run_id)
                early = _early_delete(ctx, facts, validation, throttle, run_id, pipelined=turn is not None)
                load = Load(ctx, conn, pool, run_id, facts, sources, todo, skipped, validation, throttle, early)
                validated = _stage_and_validate(load)
                _enforce_reject_limit(load, validated)
                if ctx.dry_run:
                    return _predict(load, validated)
                if turn is not None:   # from here on the run reads what earlier runs wrote: history, target
                    turn.wait()
                verdict = _judge_volume(load, validated)
                plan = _plan_merge(load, validated)
                by_rule = _merge_batches(load, validated, plan)
                return replace(_finish(load, validated, plan, by_rule), anomaly=verdict)
        except BaseException as exc:
            if workers is not None:   # the caller's pool: its jobs end here, and the caller sees it closed
                workers.close()
            if not conn.closed and not isinstance(exc, (RejectLimitExceeded, AnomalyBlocked, Transient)):
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                ledger.fail_run(conn, run_id, str(exc) if isinstance(exc, PgstageError) else repr(exc))
            raise
        finally:
            if early is not None:   # rolled back unless its swap committed: a refused or failed run deleted nothing
                early.close()
            if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                _drop_tables(conn, ledger.orphan_tables(conn, run_id))


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
    run_id = None if ctx.dry_run else ledger.resumable_run(conn, spec.pipeline.name, ctx.partition)
    if run_id is not None:
        ledger.reopen_run(conn, run_id)
        ledger.discard_unmerged(conn, run_id)
        _drop_tables(conn, ledger.orphan_tables(conn, run_id))
    sources = ctx.sources()
    todo = tuple(f for f in sources if ctx.force or ledger.loaded_before(conn, spec.pipeline.name, f) is None)
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
    return partition.window(ctx.spec, types, ctx.partition)


def _early_delete(ctx: RunContext, facts: resolved.Resolved, validation: validate.Context, throttle: Throttle,
                  run_id: int, *, pipelined: bool) -> EarlyDelete | None:
    """A replace_partition run's early DELETE (merge/early_delete.py), not started yet; None where it may not run."""
    w = validation.partition
    if w is None or not early_delete_eligible(ctx.spec, w, dry_run=ctx.dry_run, target_complete=facts.target_complete(ctx.spec),
                                              throttled=throttle.limits.active, pipelined=pipelined):
        return None
    return EarlyDelete(ctx.url, ctx.spec, w, partial(logs.emit, run_id=run_id, pipeline=ctx.spec.pipeline.name,
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
    conn, spec = load.conn, load.spec
    validating: list[tuple[SourceFile, list[Future[validate.Checked]]]] = []
    ignored: dict[str, tuple[str, ...]] = {}
    staged_rows = 0
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
            futures.append(load.pool.submit(partial(_validate_batch, load=load, batch=batch, staged=span)))
        validating.append((source, futures))
    assert load.validation.staged is not None
    load.validation.staged.set()
    _start_early(load, staged_rows)
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
    return Throttle(Limits.of(ctx.spec.load), run_id, pipeline=ctx.spec.pipeline.name, partition=ctx.partition,
                    alert_after_s=alert_seconds(ctx.spec.alerts.paused_after),
                    on_long_pause=long_pause_alert(ctx.spec, run_id, ctx.partition))


def _event(load: Load, event: str, **fields: Any) -> None:
    logs.emit(event, run_id=load.run_id, pipeline=load.spec.pipeline.name, partition=load.run.partition, **fields)


def _validate_batch(session: psycopg.Connection[Any], *, load: Load, batch: stage.StagedBatch,
                    staged: tuple[float, float] | None = None) -> validate.Checked:
    """One batch's validation and checkpoint, in one transaction (a pool job, on its own session)."""
    started = time.perf_counter()
    load.throttle.wait(session, f"validation of {batch.source.name} batch {batch.batch_no}")
    with session.transaction():
        began = time.time()
        checked = validate.check(session, load.spec, load.types, batch,
                                 checked_table(load.run_id, batch.file_no, batch.batch_no), load.run_id, load.validation)
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


def _plan_merge(load: Load, validated: Validated) -> MergePlan:
    """Before the first merge: the target exists, large loads drop its indexes, cross-batch losers are known."""
    conn, spec = load.conn, load.spec
    with conn.transaction():
        # A backfill's unit whose target was complete when `_prepare` looked, with no DDL since
        # (one catalog query), has nothing to ensure; otherwise, as every run: check, create, complete.
        unchanged = load.facts.target_complete(spec) and resolved.current(conn, spec, load.facts)
        if not unchanged:
            if load.early is not None and not _complete(load):   # an ALTER would wait on the early DELETE's lock
                load.early.abandon("the target lacks columns the run adds")
            target.ensure(conn, spec, load.types)
        if merge.replaces_partition(spec) and validated.pending:   # where its batches collect their rows
            merge.replace_partition.ensure_collector(conn, spec, validated.batches[0], load.run_id)
        if spec.pipeline.strategy == "scd2" and merge.scd2.closes_missing(spec) and validated.pending:
            merge.scd2.ensure_seen(conn, spec, load.run_id)   # the run's keys, for on_missing
        replaced = frozenset(merge.append.replaced_files(conn, spec, sorted({c.staged.source.name for c in
                                                                             validated.batches}), load.run_id)
                             if spec.pipeline.strategy == "append" and validated.pending else ())
        if replaced:   # those files' batches are collected, then swapped with each file's last batch
            merge.append.ensure_collector(conn, spec, validated.batches[0], load.run_id)
    incoming = sum(c.staged.read - c.staged_rejected for c in validated.batches)
    native = spec.pipeline.partition is not None and spec.pipeline.partition.native
    if not native and indexes.should_rebuild(conn, spec, incoming):
        if load.early is not None:
            load.early.abandon("indexes are dropped for this load")
        indexes.drop_for_load(conn, spec, load.run_id)
    # A key repeated across batches: only the run's winning row is merged. The losers are kept
    # in a logged table until the run succeeds, so a resumed run decides exactly as before.
    beaten = load.duplicates if ledger.table_exists(conn, load.duplicates) else None
    if beaten is None and len(validated.pending) > 1 and merge.batches_overlap(conn, spec, load.types,
                                                                                 validated.batches):
        beaten = load.duplicates
        merge.find_beaten(conn, spec, validated.batches, beaten)
    seen = (ledger.seen_watermark(conn, [c.staged for c in validated.batches], SOURCE_CHANGED_AT)
            if load.run.cdc else None)
    upserts = load.facts.upserts if unchanged else target.upsert_arbiter(conn, spec)
    early = load.early if load.early is not None and load.early.started else None
    return MergePlan(beaten, merge.target_is_empty(conn, spec), upserts, seen,
                     len(validated.pending), _as_of(load), replaced, early)


def _complete(load: Load) -> bool:
    """The target has every column `target.ensure` adds, as the catalog says now: ensuring it alters nothing."""
    return replace(load.facts, found=target.existing_columns(load.conn, load.spec)).target_complete(load.spec)


def _as_of(load: Load) -> datetime | None:
    """scd2's as-of time: --as-of, else the partition's day end, else the run's start (the same on every resume)."""
    ctx = load.run
    if ctx.spec.pipeline.strategy != "scd2":
        return None
    if ctx.as_of is not None:
        return ctx.as_of
    if ctx.partition is not None:
        part = ctx.spec.pipeline.partition
        zone = ZoneInfo(part.timezone) if part else timezone.utc
        return datetime.combine(date.fromisoformat(ctx.partition) + timedelta(days=1), day_time(), zone)
    return ledger.started_at(load.conn, load.run_id)


def _merge_batches(load: Load, validated: Validated, plan: MergePlan) -> dict[str, int]:
    """Phase 2: the pool merges every batch, each committing with its checkpoint, in batch order.

    Returns the rejects by rule, counted meanwhile.
    """
    order, opened = InOrder(), InOrder()
    merging = [load.pool.submit(partial(_merge_batch, load=load, plan=plan, checked=checked, last_of_file=last,
                                        turn=i, order=order, opened=opened))
               for i, (checked, last) in enumerate(validated.pending)]
    # replace_partition: the run's last batch swaps the partition (merge/replace_partition.py)
    # Counted while the pool merges (merges leave the rejects alone): on a dirty file the count
    # takes a tenth of a second that the run no longer waits for between validation and merge.
    # The staging tables go meanwhile too: merges read the checked tables only (but soft deletes,
    # whose deleted_at is staged), and a batch not merged is staged again by a resumed run.
    # Dropping a large table just after a large commit waits for the disk (half a second for a
    # million rows), which no batch waits for now.
    try:
        by_rule = ledger.rejects_by_rule(load.conn, load.run_id)
        if not _merge_reads_staged(load.spec):
            _drop_tables(load.conn, [checked.staged.table for checked, _ in validated.pending])
    finally:
        wait(merging)   # an error here must not leave the pool's merges running behind it
    results(merging)
    return by_rule


def _merge_batch(session: psycopg.Connection[Any], *, load: Load, plan: MergePlan, checked: validate.Checked,
                 last_of_file: bool, turn: int, order: InOrder, opened: InOrder) -> None:
    """One batch's merge and checkpoint (and its file's fingerprint), committed in batch order (a pool job).

    With `merge_chunk_rows`, every chunk but the last commits first, each with its own checkpoint
    (`_merge_chunks`); the last commits with the batch's, as a whole batch's merge does.
    """
    spec, started = load.spec, time.perf_counter()
    where = f"merge of {checked.staged.source.name} batch {checked.staged.batch_no}"
    try:
        if load.one_merge_at_a_time:
            order.wait(turn)
        elif load.merges_open_in_order:
            opened.wait(turn)
        records, earlier, dedup = None, None, None
        if chunks.chunkable(spec):
            dedup = merge.has_duplicates(session, spec, checked)    # once, not once a chunk
            records, earlier = _merge_chunks(session, load, plan, checked, dedup)
        load.throttle.wait(session, where)
        w = load.validation.partition
        swaps = w is not None and turn == plan.batches - 1
        pooled = session
        # The swap may go on in the transaction whose DELETE ran while this batch validated, on its own session.
        with _batch_transaction(pooled, plan.early if swaps else None) as (session, deleted):
            opened.committed(turn)   # (its turn to open: this batch pauses no more)
            began = time.time()
            if swaps:
                # Every earlier batch has committed its rows to the collector: swap them and this
                # batch's own rows (written once, straight into the target) in with this checkpoint.
                assert w is not None
                order.wait(turn)
                m = merge.replace_partition.swap(session, spec, load.types, w, checked, load.run_id, plan.beaten,
                                                 unique_key=plan.upserts, deleted=deleted)
                faults.hit("merge.swap")
            else:
                m = merge.merge(session, spec, load.types, checked, load.run_id, plan.beaten,
                                into_empty=plan.into_empty, upserts=plan.upserts, as_of=plan.as_of,
                                replacing=checked.staged.source.name in plan.replaced, records=records, dedup=dedup)
                if records is not None and earlier is not None:
                    chunks.record(session, load.run_id, checked.staged, records[1], m)
                    m = chunks.add(earlier, m)
            if last_of_file and checked.staged.source.name in plan.replaced:
                order.wait(turn)   # the file's earlier batches are collected: replace its rows in one go
                m = replace(m, deleted=merge.append.swap_file(session, spec, checked, load.run_id))
                faults.hit("merge.swap")
            if plan.as_of is not None and merge.scd2.closes_missing(spec) and turn == plan.batches - 1:
                order.wait(turn)   # every earlier batch's keys are in the seen table
                m = replace(m, deleted=merge.scd2.close_missing(session, spec, load.types, checked, load.run_id,
                                                                plan.as_of))
                faults.hit("merge.swap")
            merged = time.time()
            ledger.record_batch(session, load.run_id, checked.staged, _merged(checked, m), "merged",
                                {"merge": (began, merged)})
            if last_of_file and load.run.cdc:
                if plan.seen is not None:
                    ledger.record_watermark(session, spec.pipeline.name, checked.staged.source.name, plan.seen,
                                            load.run_id)
            elif last_of_file:
                ledger.record_file(session, spec.pipeline.name, checked.staged.source, load.run_id)
            scratch = [checked.staged.table, checked.table] if _merge_reads_staged(spec) else [checked.table]
            dropped = checked.staged.read <= DROP_WITH_MERGE_RECORDS
            if dropped:
                # A small batch's tables go in its merge's transaction: one commit (a WAL flush, which
                # a DROP forces) instead of two. Crash-safe as before: should this transaction not
                # commit, the DROP rolls back with the merge and the checkpoint, and a resumed run
                # discards the unmerged batch's tables as it always has; once it commits, nothing
                # reads them again. A large table's files take long to remove at commit, which the
                # next batch's commit (in order, after this one) should not wait for: dropped below.
                _drop_tables(session, scratch)
            order.wait(turn)
            faults.hit("merge.commit")
        faults.hit("merge.after")
        _event(load, "batch merged", file=checked.staged.source.name, batch=checked.staged.batch_no,
               inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale, deleted=m.deleted,
               seconds=round(time.perf_counter() - started, 3))
    except BaseException:
        order.failed()   # the batches after this one roll back: a failed run stops where it failed
        opened.failed()
        raise
    order.committed(turn)
    # its staging table: dropped by `_merge_batches` while the merges ran, unless a merge reads it
    if not dropped:
        _drop_tables(pooled, scratch)


# A batch of at most this many records drops its checked table inside its merge's transaction.
DROP_WITH_MERGE_RECORDS = 50_000


@contextmanager
def _batch_transaction(session: psycopg.Connection[Any], early: EarlyDelete | None
                       ) -> Iterator[tuple[psycopg.Connection[Any], int | None]]:
    """A batch's merge transaction, on its pool session; for a replace_partition swap whose DELETE ran
    early (merge/early_delete.py), that still-open transaction on its own session, with how many rows
    it deleted. Either commits when the block ends well and rolls back otherwise."""
    taken = early.take() if early is not None else None
    if early is None or taken is None:
        with session.transaction():
            yield session, None
        return
    with early.transaction() as conn:
        yield conn, early.deleted


def _merge_reads_staged(spec: Spec) -> bool:
    """Whether a batch's merge reads its staging table: soft deletes take the source's deleted_at there."""
    return merge.soft_deletes(spec) is not None


def _merge_chunks(session: psycopg.Connection[Any], load: Load, plan: MergePlan, checked: validate.Checked,
                  dedup: bool) -> tuple[merge.Records, merge.MergeCounts]:
    """Merge and commit every chunk of the batch but the last (pipeline/chunks.py); returns the last
    chunk's records and the counts committed so far, a killed attempt's chunks included."""
    staged = checked.staged
    done, counts = chunks.committed(session, load.run_id, staged)
    first = staged.record_start if done is None else done + 1
    *leading, last = chunks.ranges(first, staged.record_end, load.spec.load.merge_chunk_rows or 1)
    for records in leading:
        load.throttle.wait(session, f"merge of {staged.source.name} batch {staged.batch_no} records {records[0]}-{records[1]}")
        with session.transaction():
            m = merge.merge(session, load.spec, load.types, checked, load.run_id, plan.beaten,
                            into_empty=plan.into_empty, upserts=plan.upserts, records=records, dedup=dedup)
            chunks.record(session, load.run_id, staged, records[1], m)
            faults.hit("merge.chunk.commit")
        faults.hit("merge.chunk.after")
        counts = chunks.add(counts, m)
    return last, counts


def _finish(load: Load, validated: Validated, plan: MergePlan, by_rule: dict[str, int]) -> RunReport:
    """After the last merge: indexes back, rejects of keys loaded since resolved, the run closed with its counts."""
    conn = load.conn
    if plan.beaten:
        _drop_tables(conn, [plan.beaten])
    if merge.replaces_partition(load.spec) or plan.replaced:
        _drop_tables(conn, [merge.replace_partition.collector(load.run_id)])
    if load.spec.pipeline.strategy == "scd2":
        _drop_tables(conn, [merge.scd2.seen_table(load.run_id)])
    load.throttle.wait(conn, "index rebuilds")   # a rebuild writes its whole index to the WAL at once
    indexes.rebuild(conn, load.spec)
    with conn.transaction():
        merge.resolve_rejects(conn, load.spec, load.types, load.run_id, load.validation.collation)
    per_file = ledger.batch_counts(conn, load.run_id)
    report = _report(load, "succeeded", per_file, validated.ignored, by_rule)
    ledger.finish_run(conn, load.run_id, "succeeded", report.counts, by_rule, _file_rows(report.files))
    return report


def _merged(checked: validate.Checked, m: merge.MergeCounts) -> Counts:
    """A batch's counts once merged (or predicted): its validation's counts plus the merge's."""
    pre = _pre_merge(checked)
    return Counts(read=pre.read, rejected=pre.rejected, valid=pre.valid, duplicate=pre.valid - m.distinct,
                  inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale, deleted=m.deleted)


def _report(load: Load, status: str, per_file: dict[str, Counts], ignored: dict[str, tuple[str, ...]],
            by_rule: dict[str, int]) -> RunReport:
    file_status = "loaded" if status == "succeeded" else "blocked" if status == "blocked" else "rejected"
    files = tuple(FileReport(name, file_status, counts, ignored.get(name, ())) for name, counts in per_file.items())
    totals = sum(per_file.values(), Counts())
    ctx = load.run
    return RunReport(load.run_id, ctx.spec.pipeline.name, ctx.partition, status, totals, by_rule,
                     time.perf_counter() - ctx.started, ctx.spec.pipeline.target, (*files, *load.skipped),
                     warnings=key_warnings(totals, ctx.spec.pipeline.key, ctx.spec.pipeline.version),
                     throttled_s=throttled_seconds(load.conn, load.run_id))


def _pre_merge(c: validate.Checked) -> Counts:
    return Counts(read=c.staged.read, rejected=c.staged_rejected, valid=c.staged.read - c.staged_rejected)


def _drop_tables(conn: psycopg.Connection[Any], tables: list[str]) -> None:
    stage.drop(conn, *tables)


def _file_rows(files: tuple[FileReport, ...]) -> list[dict[str, Any]]:
    return [{"path": f.path, "status": f.status, "rows": f.counts.as_dict(), "ignored_fields": list(f.ignored_fields)}
            for f in files]
