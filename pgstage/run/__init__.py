"""Read this first: one run of a pipeline, top to bottom as in SPEC §4.

`run()` parses what it is given into a frozen `RunContext`, then retries `_attempt` on
transient faults. One attempt is a row of named phases, in this order (this package's modules
hold them: state.py what they pass each other, stage_validate.py phase 1 and the checks after
it, merge_batches.py phase 2):

    _prepare            ledger, session settings, column types, target and references checked
    pipeline_lock       one run per (pipeline, partition)
    _recover            rebuild indexes a killed run dropped, drop its tables, resume its run id
    _stage_and_validate phase 1, per file and batch: extract + stage → validate (+ transform) → checkpoint
    _enforce_reject_limit  the reject threshold over the whole run: nothing merged above it
    _judge_volume       the run's volume against its history (ops/anomalies.py): block → nothing merged
    _predict            (dry run) phase 2 forecast read-only, then stop
    _plan_merge         target created, indexes dropped for a large load, cross-batch losers set aside
    _merge_batches      phase 2, per batch, one transaction each: merge + checkpoint (+ the file's
                        fingerprint with its last batch); the first batches' merges may have run
                        during phase 1, uncommitted, and commit first (early_merge.py)
    _finish             indexes rebuilt, rejects resolved, run closed → report

Around the attempts, `run()` hands the outcome to pgstage/ops/outcome.py (log, reconcile,
alerts), which never changes it; phases report their events through `_event` (ops/logs.py).

Each phase takes the attempt's frozen `Load` and returns what the next one needs, so a new
merge strategy belongs in `_merge_batch` (and pipeline/merge/), a throttle between
batches in the pool jobs `_validate_batch` / `_merge_batch`, an alert hook around `_finish`.

Nothing reaches the target unless the whole run is under its reject threshold. A killed
run resumes at its first unmerged batch under the same run id; transient database faults
are retried with backoff, resuming the same way. The run's counts are the sum of its
batches' counts in the ledger, so they balance across crashes.

Batches are validated and merged by a pool of `load.workers` sessions (workers.py) while
this session stages the next batch; merges commit in batch order, so a crash leaves a prefix.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from pgstage import indexes, resolved
from pgstage.db import connect, resolve_url, wrap
from pgstage.errors import (AnomalyBlocked, ConnectionFailed, PgstageError, RejectLimitExceeded, Transient,
                            TransientDatabaseError, UsageError)
from pgstage.ops import outcome
from pgstage.pipeline import ledger, merge
from pgstage.pipeline.extract import resolve_files
from pgstage.pipeline.extract.digest import Ahead
from pgstage.report import RunReport
from pgstage.run.merge_batches import _finish, _merge_batches, _plan_merge
from pgstage.run.stage_validate import (_early_delete, _early_merge, _enforce_reject_limit, _judge_volume, _predict,
                                        _prepare, _recover, _skip, _stage_and_validate, _throttle,
                                        _validation_context)
from pgstage.run.state import (AnomalyReport, Load, RejectLimitReport, RunContext, Turn, _drop_tables, parse_as_of,
                               parse_partition)
from pgstage.safety import pipeline_lock
from pgstage.spec import Spec, load_spec

if TYPE_CHECKING:   # imported by the phases that use them: a run whose files were all loaded before needs none
    from pgstage.pipeline.merge.early_delete import EarlyDelete
    from pgstage.run.early_merge import EarlyMerge
    from pgstage.workers import Workers

__all__ = ["AnomalyReport", "RejectLimitReport", "RunContext", "Turn", "parse_as_of", "parse_partition", "run"]


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
        # The files are hashed in a thread while the run connects and stages (extract/digest.py); each
        # reader of a digest waits for it where it needs it, and the thread ends with the attempts.
        with Ahead(f.digest for f in ctx.files):
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
        from pgstage.workers import Workers   # (here: a run with nothing to load opens no pool)

        early: EarlyDelete | None = None
        merging: EarlyMerge | None = None
        try:
            with (nullcontext(workers) if workers is not None
                  else Workers(ctx.url, ctx.spec.load, f"{ctx.spec.pipeline.name}:{ctx.partition or ''}")) as pool:
                facts = resolved.with_target(conn, ctx.spec, facts)   # a lone run reads it now, under the lock
                validation, throttle = _validation_context(ctx, facts), _throttle(ctx, run_id)
                early = _early_delete(ctx, facts, validation, throttle, run_id, pipelined=turn is not None)
                merging = _early_merge(conn, ctx, facts, throttle, run_id, pipelined=turn is not None)
                load = Load(ctx, conn, pool, run_id, facts, sources, todo, skipped, validation, throttle, early,
                            merging)
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
            if merging is not None:   # likewise for merges begun early; a refused run gets its indexes back now
                merging.close()
                if (merging.dropped and not conn.closed
                        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE):
                    indexes.rebuild(conn, ctx.spec)
            if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                _drop_tables(conn, ledger.orphan_tables(conn, run_id))
