"""Phase 2 of a run: the merge plan, every batch merged with its checkpoint in batch order, the finish.

`_plan_merge` (target ensured, indexes dropped for a large load, cross-batch losers set aside),
`_merge_batches` (the pool merges; each batch commits with its checkpoint, in order, so a crash
leaves a prefix) and `_finish` (indexes rebuilt, rejects resolved, the run closed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import date, datetime, time as day_time, timedelta, timezone
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import psycopg

from pgstage import faults, indexes, resolved, target
from pgstage.names import SOURCE_CHANGED_AT
from pgstage.pipeline import chunks, ledger, merge
from pgstage.report import RunReport
from pgstage.run.state import Load, MergePlan, Validated, _drop_tables, _event, _file_rows, _merged, _report
from pgstage.spec import Spec

if TYPE_CHECKING:   # imported when a batch is merged: a run whose files were all loaded before needs none
    from pgstage.pipeline import validate
    from pgstage.pipeline.merge.early_delete import EarlyDelete
    from pgstage.workers import InOrder


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
    begun = load.early_merge is not None and load.early_merge.started   # it decided on the indexes (and holds rows)
    if not native and not begun and indexes.should_rebuild(conn, spec, incoming):
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
    # An early merge's session found the target empty or not before its first write, which
    # this session would otherwise scan past its uncommitted rows to learn.
    empty = load.early_merge.found_empty if begun and load.early_merge else None
    return MergePlan(beaten, merge.target_is_empty(conn, spec) if empty is None else empty, upserts, seen,
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
    from concurrent.futures import wait

    from pgstage.workers import InOrder, results

    order, opened = InOrder(), InOrder()
    # The first batches may be merging already, uncommitted, on a session of their own (run/early_merge.py),
    # unless the plan sets cross-batch losers aside, which they did not know: then they are rolled back.
    ahead = 0
    if load.early_merge is not None and plan.beaten is None:
        ahead = load.early_merge.stop()
    elif load.early_merge is not None:
        load.early_merge.close()
    if load.early_merge is not None and not ahead:
        load.early_merge.give_back_key(load.conn)   # a key dropped for a first load is back before any merge
    merging = [load.pool.submit(partial(_merge_batch, load=load, plan=plan, checked=checked, last_of_file=last,
                                        turn=i, order=order, opened=opened))
               for i, (checked, last) in enumerate(validated.pending) if i >= ahead]
    # replace_partition: the run's last batch swaps the partition (merge/replace_partition.py)
    # Counted while the pool merges (merges leave the rejects alone): on a dirty file the count
    # takes a tenth of a second that the run no longer waits for between validation and merge.
    # The staging tables go meanwhile too: merges read the checked tables only (but soft deletes,
    # whose deleted_at is staged), and a batch not merged is staged again by a resumed run.
    # Dropping a large table just after a large commit waits for the disk (half a second for a
    # million rows), which no batch waits for now.
    # With the key dropped for a first load the early session merges every batch (run/early_merge.py): its
    # commit comes last here, so that the staged tables go while it merges the last batch.
    all_early = load.early_merge is not None and load.early_merge.merges_all
    try:
        if ahead and not all_early:
            _commit_early(load, plan, validated.pending[:ahead], order, opened)
        by_rule = ledger.rejects_by_rule(load.conn, load.run_id)
        if not _merge_reads_staged(load.spec):
            _drop_tables(load.conn, [checked.staged.table for checked, _ in validated.pending])
        if ahead and all_early:
            _commit_early(load, plan, validated.pending[:ahead], order, opened)
    except BaseException:
        order.failed()   # the pool's merges wait for these batches' commits: they roll back
        opened.failed()
        raise
    finally:
        wait(merging)   # an error here must not leave the pool's merges running behind it
    results(merging)
    return by_rule


def _commit_early(load: Load, plan: MergePlan, batches: tuple[tuple[validate.Checked, bool], ...], order: InOrder,
                  opened: InOrder) -> None:
    """Commit the batches merged early, in their turn before the pool's; should the early session have
    failed, merge them here instead, on the main session, in batch order (the pool's merges wait for them)."""
    assert load.early_merge is not None
    committed = load.early_merge.commit()
    if committed:
        assert len(committed) == len(batches)
        order.committed(len(batches) - 1)
        opened.committed(len(batches) - 1)
        tables = [checked.table for checked in committed]   # read no more
        if load.early_merge.merges_all:   # no other merge runs beside: the pool drops them beside the index rebuilds
            load.early_merge.drop_later(load.pool.submit(lambda session: _drop_tables(session, tables)))
        else:
            _drop_tables(load.conn, tables)
        return
    load.early_merge.give_back_key(load.conn)
    for turn, (checked, last) in enumerate(batches):
        _merge_batch(load.conn, load=load, plan=plan, checked=checked, last_of_file=last, turn=turn, order=order,
                     opened=opened)


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
