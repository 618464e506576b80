"""`pgstage backfill`: every (spec, day) of a range as one unit, run in parallel, resumable, shareable.

Each unit is exactly `pgstage run SPEC --partition DAY` (same ledger rows, same guarantees),
run in-process through `pgstage.run` on a session, and a pool of batch sessions per spec, that
the job keeps from unit to unit, with what the spec's previous unit resolved in the catalog
(types, target, references: pgstage/resolved.py), reused while no DDL has touched it. Units sit
in the ledger queue (queue.py): a re-run of the same command resumes the same backfill and
does only what is left, and `join=ID` lets other processes or machines take units from it.
A unit that fails is recorded with its reason and the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage.backfill import held, queue
from pgstage.backfill.forecast import Forecast, forecast
from pgstage.backfill.late import send_late
from pgstage.backfill.turns import Turns, UnitTurn, overlaps
from pgstage.db import connect, execute, resolve_url
from pgstage.errors import PgstageError, UsageError
from pgstage.pipeline import ledger
from pgstage.report import Counts
from pgstage.resolved import Memo
from pgstage.run import RejectLimitReport, parse_partition, run
from pgstage.spec import Spec, load_spec
from pgstage.workers import Workers

__all__ = ["BackfillReport", "Progress", "backfill"]

POLL_S = 0.5    # how often an idle job looks again for a unit held by another job or process


@dataclass(frozen=True)
class Progress:
    """One overall progress line: units done of total (every process's), this process's records and rate."""

    done: int
    total: int
    failed: int
    records: int
    elapsed_s: float
    forecast: Forecast

    @property
    def records_per_s(self) -> float:
        return self.records / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass(frozen=True)
class BackfillReport:
    backfill_id: int
    resumed: bool
    pipelines: tuple[str, ...]
    first_day: date
    last_day: date
    jobs: int
    units: dict[str, int]           # by status, every process's
    counts: Counts                  # summed over the succeeded units' runs: the §5 identity holds for the sum
    duration_s: float               # this process's wall time
    unit_seconds: float             # the units' own durations, summed
    records: int                    # read by this process's units
    failures: tuple[dict[str, Any], ...]
    warnings: tuple[str, ...]
    indexes_dropped: tuple[str, ...] = ()   # by this process, when the backfill started (held.py)
    indexes_rebuilt: tuple[str, ...] = ()   # by this process, when no unit was left

    @property
    def failed(self) -> bool:
        return bool(self.units.get("failed"))

    def as_dict(self) -> dict[str, Any]:
        """The `--json` document."""
        return {"backfill_id": self.backfill_id, "resumed": self.resumed, "pipelines": list(self.pipelines),
                "from": self.first_day.isoformat(), "to": self.last_day.isoformat(), "jobs": self.jobs,
                "units": dict(self.units), "rows": self.counts.as_dict(), "duration_s": round(self.duration_s, 3),
                "unit_seconds": round(self.unit_seconds, 3), "records": self.records,
                "records_per_s": round(self.records / self.duration_s) if self.duration_s > 0 else 0,
                "failures": list(self.failures), "warnings": list(self.warnings),
                "indexes": {"dropped": list(self.indexes_dropped), "rebuilt": list(self.indexes_rebuilt)}}


def backfill(specs: Sequence[str | Path] = (), *, start: str | date | None = None, end: str | date | None = None,
             jobs: int = 1, newest_first: bool = False, retry_failed: bool = False, join: int | None = None,
             deadline: datetime | None = None, db: str | None = None, base_dir: Path | None = None,
             on_progress: Callable[[Progress], None] | None = None,
             clock: Callable[[], float] = time.monotonic) -> BackfillReport:
    """Run every (spec, day) from `start` to `end` on `jobs` threads, or join backfill `join`; return its summary.

    Failed units do not raise: they are in the report (`failed`), with their reasons.
    """
    if jobs < 1:
        raise UsageError(f"--jobs {jobs} must be at least 1")
    url = resolve_url(db)   # the embedded server, if any, starts once for every unit
    with connect(url) as conn:
        ledger.ensure(conn)
        queue.ensure(conn)
        if join is not None:
            if specs or start or end:
                raise UsageError("--join takes its specs and days from the backfill it joins",
                                 hint=f"run `pgstage backfill --join {join}` without specs, --from or --to")
            found = queue.find(conn, join)
            if found is None:
                raise UsageError(f"there is no backfill {join} in this database", hint="check the id and --db")
            job, resumed = found, True
        else:
            job, resumed = _create(conn, specs, start, end, newest_first, base_dir)
        loaded = _load_specs(job.specs)
        if retry_failed:
            queue.retry_failed(conn, job.backfill_id)
        before = queue.statuses(conn, job.backfill_id)
        # While this session lives the backfill's dropped indexes are held: units and other runs leave them dropped.
        held.hold(conn, job.backfill_id)
        kept = held.Held(job.backfill_id, loaded, [Path(ref.base_dir) if ref.base_dir else None for ref in job.specs],
                         decide=join is None)
        kept.start(conn, queue.pending_days(conn, job.backfill_id))
        tally = _Tally(job, before, jobs, deadline, clock, on_progress, url, loaded, kept)
        threads = [threading.Thread(target=_work, args=(url, job.backfill_id, loaded, job.specs, tally),
                                    name=f"pgstage backfill {job.backfill_id} job {i + 1}") for i in range(jobs)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:   # Ctrl-C: the jobs finish the units they hold and claim no more
            tally.stop.set()
            for thread in threads:
                thread.join()
            raise
        if tally.crash is not None:
            raise tally.crash
        units = queue.statuses(conn, job.backfill_id)
        # No unit is left, failed ones included: every process gets here, and the first puts the indexes back.
        rebuilt = () if units["pending"] else kept.end(conn)
        total = queue.counts(conn, job.backfill_id)
        total.check_merged()
        return BackfillReport(job.backfill_id, resumed, tuple(s.pipeline for s in job.specs), job.first_day,
                              job.last_day, jobs, units, total, clock() - tally.started,
                              queue.unit_seconds(conn, job.backfill_id), tally.records,
                              tuple(queue.failures(conn, job.backfill_id)), tuple(tally.warnings),
                              tuple(kept.dropped), rebuilt)


def _create(conn: psycopg.Connection[Any], specs: Sequence[str | Path], start: str | date | None,
            end: str | date | None, newest_first: bool, base_dir: Path | None) -> tuple[queue.Backfill, bool]:
    if not specs:
        raise UsageError("name at least one spec to backfill, or --join ID")
    first, last = parse_partition(start), parse_partition(end)
    if first is None or last is None:
        raise UsageError("a backfill needs --from and --to", hint="e.g. --from 2024-01-01 --to 2024-12-31")
    if first > last:
        raise UsageError(f"--from {first} is after --to {last}")
    refs = []
    for path in specs:
        spec = load_spec(path)
        if spec.source.kind == "postgres" or "{date}" not in (spec.source.path or ""):
            raise UsageError(f"{path}: source.path has no {{date}}, so every day would load the same files",
                             hint="a backfill loads daily files: put {date} in source.path")
        refs.append(queue.SpecRef(str(Path(path).resolve()), spec.pipeline.name,
                                  str(base_dir.resolve()) if base_dir else None))
    names = [r.pipeline for r in refs]
    if len(set(names)) != len(names):
        raise UsageError(f"two specs share a pipeline name: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return queue.create_or_resume(conn, tuple(refs), first, last, newest_first)


def _load_specs(refs: tuple[queue.SpecRef, ...]) -> tuple[Spec, ...]:
    """Every spec once, up front: a spec this machine cannot read stops the process before it claims a unit."""
    return tuple(load_spec(ref.path) for ref in refs)


class _Tally:
    """This process's progress, shared by its jobs; the forecast and its warnings."""

    def __init__(self, job: queue.Backfill, before: dict[str, int], jobs: int, deadline: datetime | None,
                 clock: Callable[[], float], on_progress: Callable[[Progress], None] | None, url: str,
                 specs: tuple[Spec, ...] = (), kept: held.Held | None = None) -> None:
        self.job, self.jobs, self.deadline, self.clock, self.on_progress = job, jobs, deadline, clock, on_progress
        self.url, self.specs, self.kept = url, specs, kept   # the backfill's indexes (held.py)
        self._alerted = False   # the `late` alert goes out once per backfill (pgstage/backfill/late.py)
        self.total = sum(before.values())
        self.done_before = self.total - before["pending"]
        self.started = clock()
        self.records = 0
        self.warnings: list[str] = []
        self.crash: BaseException | None = None
        self.stop = threading.Event()
        self.crashed = threading.Event()   # a job died: units waiting for its day stop (turns.py)
        self.turns = Turns(self.crashed)
        self.overlap = [i for i, spec in enumerate(specs) if overlaps(spec)]   # may run two days at once
        self._late = False
        self._lock = threading.Lock()

    def unit_done(self, outcome: queue.Outcome, statuses: dict[str, int]) -> None:
        alert: str | None = None
        with self._lock:
            self.records += outcome.records
            done = self.total - statuses["pending"]
            elapsed = self.clock() - self.started
            now = datetime.now().astimezone()
            fc = forecast(measured=done - self.done_before, elapsed_s=elapsed, remaining=statuses["pending"],
                          jobs=self.jobs, now=now, deadline=self.deadline,
                          most_jobs=len(self.job.specs) + len(self.overlap))
            if fc.late and not self._late:   # said as soon as the projection passes the deadline, again if it recovers and slips
                warning = fc.warning(self.jobs)
                if warning:
                    self.warnings.append(warning)
                    if not self._alerted:
                        self._alerted, alert = True, warning
            self._late = fc.late
            if self.on_progress:
                self.on_progress(Progress(done, self.total, statuses["failed"], self.records, elapsed, fc))
        if alert is not None:   # outside the lock: a slow receiver must not hold the other jobs
            send_late(self.url, self.job.backfill_id, self.specs, alert)


def _work(url: str, backfill_id: int, specs: tuple[Spec, ...], refs: tuple[queue.SpecRef, ...], tally: _Tally) -> None:
    """One job: claim a unit, run it on this job's session, record its outcome with the claim; until none is left.

    "None left" means none pending, not none free: a job whose claim finds every unit held waits
    for them, so it is there to re-claim a unit whose process was killed.
    """
    claimer: psycopg.Connection[Any] | None = None
    session: psycopg.Connection[Any] | None = None
    holding: queue.Unit | None = None   # the unit claimed and not yet committed (turns.py must hear if it dies)
    pools: dict[int, Workers] = {}   # each spec's batch sessions, kept from unit to unit like `session`
    memos: dict[int, Memo] = {}      # each spec's types, target and references, re-checked by one query a unit
    try:
        claimer = connect(url)
        # The claim's transaction stays open while its unit runs.
        execute(claimer, sql.SQL("SET idle_in_transaction_session_timeout = 0"), label="backfill: claim session")
        while not tally.stop.is_set():
            if session is None or session.closed:
                session = connect(url)
            with claimer.transaction():
                unit = holding = queue.claim(claimer, backfill_id, tally.overlap, tally.turns.running())
                if unit is not None:
                    ref, spec = refs[unit.spec_no], specs[unit.spec_no]
                    pool = pools.get(unit.spec_no)
                    if pool is None or pool.closed:   # a failed run closes the pool it was lent
                        pool = pools[unit.spec_no] = Workers(url, spec.load, f"backfill:{spec.pipeline.name}")
                    outcome = _run_unit(spec, unit.day, url, Path(ref.base_dir) if ref.base_dir else None,
                                        session, pool, memos.setdefault(unit.spec_no, Memo()),
                                        UnitTurn(tally.turns, unit.spec_no, unit.day, unit.after))
                    queue.finish(claimer, unit, outcome)
            if unit is not None:   # its outcome is committed: the pipeline's next day may merge
                tally.turns.ended(unit.spec_no, unit.day, committed=True)
                holding = None
                if tally.kept is not None:   # a target the backfill's first unit created: drop its indexes now?
                    tally.kept.after_unit(session)
            units = queue.statuses(claimer, backfill_id)
            if unit is None:
                if not units["pending"]:
                    return
                # Every pending unit is held, or waits behind its pipeline's held day. Stay and look
                # again: if the process holding it dies, its claim rolls back and this job takes it over.
                tally.stop.wait(POLL_S)
                continue
            tally.unit_done(outcome, units)
            if session.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                session.close()   # a failed run may leave its session mid-transaction or broken: the next unit gets a new one
    except BaseException as exc:  # the queue itself failed (database gone): the units stay pending for a re-run
        tally.crash = tally.crash or exc
        tally.stop.set()
        tally.crashed.set()
        if holding is not None:
            tally.turns.ended(holding.spec_no, holding.day, committed=False)
    finally:
        for pool in pools.values():
            pool.close()
        for conn in (claimer, session):
            if conn is not None:
                conn.close()


def _run_unit(spec: Spec, day: date, url: str, base_dir: Path | None, session: psycopg.Connection[Any],
              pool: Workers, memo: Memo | None = None, turn: UnitTurn | None = None) -> queue.Outcome:
    """`pgstage run SPEC --partition DAY`, in-process; a failure becomes the unit's outcome, not an exception
    (but `Stopped`, a BaseException, ends the job with its unit unrecorded, as a crash would)."""
    started = time.perf_counter()
    try:
        report = run(spec, partition=day, db=url, base_dir=base_dir, conn=session, workers=pool,
                     ledger_ready=True, memo=memo, turn=turn)   # the ledger ensured once by `backfill`
    except RejectLimitReport as exc:
        return queue.Outcome("failed", exc.report.run_id if exc.report else None, exc.exit_code, str(exc),
                             time.perf_counter() - started, exc.report.counts.read if exc.report else 0)
    except PgstageError as exc:
        return queue.Outcome("failed", None, exc.exit_code, str(exc), time.perf_counter() - started)
    except Exception as exc:  # a bug in one unit must not stop the others; the summary shows it
        return queue.Outcome("failed", None, 1, f"internal error: {type(exc).__name__}: {exc}",
                             time.perf_counter() - started)
    status = "skipped" if report.status == "skipped" else "succeeded"
    return queue.Outcome(status, report.run_id, 0, report.message, time.perf_counter() - started, report.counts.read)
