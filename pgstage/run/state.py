"""What the phases of a run hand each other (pgstage/run/__init__.py reads them in order).

The run's frozen context, the attempt's `Load`, phase 1's `Validated`, the merge's `MergePlan`,
the errors that carry a report, and the few helpers every phase shares: events, reports, drops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import psycopg

from pgstage import resolved
from pgstage.errors import AnomalyBlocked, RejectLimitExceeded, UsageError
from pgstage.names import duplicates_table
from pgstage.ops import logs
from pgstage.pipeline import chunks, merge, transform
from pgstage.pipeline.extract import SourceFile
from pgstage.report import Counts, FileReport, RunReport, key_warnings
from pgstage.spec import Spec

if TYPE_CHECKING:   # imported by the phases that use them: a run whose files were all loaded before needs none
    from pgstage.pipeline import validate
    from pgstage.pipeline.merge.early_delete import EarlyDelete
    from pgstage.run.early_merge import EarlyMerge
    from pgstage.throttle import Throttle
    from pgstage.workers import Workers


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
        if not self.cdc:
            return self.files
        from pgstage.pipeline.extract import postgres

        return (postgres.pseudo_file(self.spec.source),)


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
    early_merge: EarlyMerge | None = None   # keyed strategies: the first batches merged while the last validates

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


def _event(load: Load, event: str, **fields: Any) -> None:
    logs.emit(event, run_id=load.run_id, pipeline=load.spec.pipeline.name, partition=load.run.partition, **fields)


def _merged(checked: validate.Checked, m: merge.MergeCounts) -> Counts:
    """A batch's counts once merged (or predicted): its validation's counts plus the merge's."""
    pre = _pre_merge(checked)
    return Counts(read=pre.read, rejected=pre.rejected, valid=pre.valid, duplicate=pre.valid - m.distinct,
                  inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale, deleted=m.deleted)


def _report(load: Load, status: str, per_file: dict[str, Counts], ignored: dict[str, tuple[str, ...]],
            by_rule: dict[str, int]) -> RunReport:
    from pgstage.throttle import throttled_seconds

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
    if tables:   # (a run that staged nothing has none, and needs no staging code)
        from pgstage.pipeline import stage

        stage.drop(conn, *tables)


def _file_rows(files: tuple[FileReport, ...]) -> list[dict[str, Any]]:
    return [{"path": f.path, "status": f.status, "rows": f.counts.as_dict(), "ignored_fields": list(f.ignored_fields)}
            for f in files]
