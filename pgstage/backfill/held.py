"""A backfill's secondary indexes: dropped once when it starts, rebuilt once when its last unit is done.

Each day of a backfill merges a few thousand rows into a growing target, and each row goes into
every index of it: the primary key, which the merge needs, and the secondary indexes, which
only the readers need. A one-file load drops the secondary ones and rebuilds them once
(pgstage/indexes.py); a backfill does the same around all its days, under the same rules:
`load.index_strategy` `rebuild`, or `auto` when the backfill's expected rows dwarf the target
as `indexes.should_rebuild` judges one run (an empty target always qualifies).

Crash safety is that of a run: each definition is written to `pgstage.index_rebuilds` with the
DROP, here with the backfill's id. Every process working on the backfill holds the backfill's
advisory lock, shared, for as long as it runs (`hold`), so "held by a live backfill" is one
lock test, and the units' own rebuilds (`indexes.rebuild`, at a run's start and end) leave
those indexes alone. A backfill whose processes all died holds nothing: the next run on the
target, `pgstage repair`, or the backfill run again rebuilds them.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage import indexes
from pgstage.backfill import queue
from pgstage.db import execute, relation_exists
from pgstage.errors import PgstageError
from pgstage.ops import logs
from pgstage.pipeline.extract import resolve_files
from pgstage.safety import apply_session_settings
from pgstage.spec import Spec

SAMPLE_BYTES = 1 << 20   # how much of a day's file tells its bytes per record


def hold(conn: psycopg.Connection[Any], backfill_id: int) -> None:
    """This process works on the backfill: its indexes stay dropped while the session lives (or `release`)."""
    execute(conn, sql.SQL("SELECT pg_advisory_lock_shared({})").format(indexes.build_backfill_key(sql.Placeholder())),
            (backfill_id,), label="backfill: hold")


def release(conn: psycopg.Connection[Any], backfill_id: int) -> None:
    execute(conn, sql.SQL("SELECT pg_advisory_unlock_shared({})").format(indexes.build_backfill_key(sql.Placeholder())),
            (backfill_id,), label="backfill: release")


def by_target(specs: Sequence[Spec]) -> dict[str, list[Spec]]:
    """The specs grouped by the target they write (several sources often share one)."""
    out: dict[str, list[Spec]] = {}
    for spec in specs:
        out.setdefault(spec.pipeline.target, []).append(spec)
    return out


def expected_rows(spec: Spec, days: Sequence[date], base_dir: Path | None) -> int:
    """An estimate of the records the days' files hold: their bytes (less a header line each) over the
    bytes per record of the first file's first MiB.

    Compressed files count at their compressed size (too few records: `auto` errs toward keeping
    the indexes); a file without a line end in its first MiB (Parquet) counts as none.
    """
    base = base_dir or (spec.path.parent if spec.path else Path.cwd())
    sizes: list[int] = []
    sample: Path | None = None
    for day in days:
        for source in resolve_files(spec.source.path or "", base, day, allow_missing=True):
            sizes.append(source.size)
            if sample is None and source.size and source.member is None:
                sample = source.path
    if sample is None:
        return 0
    with sample.open("rb") as f:
        head = f.read(SAMPLE_BYTES)
    header = len(head.split(b"\n", 1)[0]) + 1 if spec.source.kind == "csv" and spec.source.header else 0
    records = head.count(b"\n") - (1 if header else 0)
    if records <= 0 or len(head) <= header:
        return 0
    return sum(max(0, size - header) for size in sizes) * records // (len(head) - header)


def _empty(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    row = execute(conn, sql.SQL("SELECT NOT EXISTS (SELECT FROM {})").format(sql.Identifier(*spec.target)),
                  label="backfill: target empty?").fetchone()
    return bool(row and row[0])


def qualifies(conn: psycopg.Connection[Any], specs: Sequence[Spec], expected: int) -> bool:
    """Whether the specs writing one (existing) target let the backfill drop its indexes for `expected` rows.

    Any spec saying `keep` (or loading a native partition, whose indexes a run never drops) keeps them.
    """
    if expected <= 0 or any(s.load.index_strategy == "keep" or (s.pipeline.partition is not None
                                                                  and s.pipeline.partition.native) for s in specs):
        return False
    if any(s.load.index_strategy == "rebuild" for s in specs) or _empty(conn, specs[0]):
        return True
    return indexes.should_rebuild(conn, specs[0], expected)


class Held:
    """This process's part in the backfill's indexes; shared by its jobs.

    A target that does not exist yet when the backfill starts is created by its first unit, with
    its declared indexes (`[indexes]`): the decision waits for that unit (`after_unit`), and is
    then made once for the days still pending. Only the process that started (or re-ran) the
    backfill decides; processes that `--join` it only hold and rebuild.
    """

    def __init__(self, backfill_id: int, specs: Sequence[Spec], base_dirs: Sequence[Path | None], decide: bool) -> None:
        self.backfill_id, self.specs, self.base_dirs, self.decide = backfill_id, tuple(specs), tuple(base_dirs), decide
        self.dropped: list[str] = []
        self.waiting: set[str] = set()   # targets missing at the start, decided after a unit created them
        self._lock = threading.Lock()

    def start(self, conn: psycopg.Connection[Any], pending: dict[int, list[date]]) -> None:
        """Drop the secondary indexes of every existing target that qualifies, once, for the whole backfill.

        `pending`: each spec's (by number) days still to load. The caller holds the backfill (`hold`).
        """
        if self.decide:
            self._decide(conn, {spec.pipeline.target for spec in self.specs}, pending)

    def after_unit(self, conn: psycopg.Connection[Any]) -> None:
        """After a unit's outcome is committed, on its job's session: decide for targets that exist now."""
        if not self.waiting or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            return   # (nothing waits: no query at all)
        with self._lock:
            if self.waiting:
                self._decide(conn, set(self.waiting), queue.pending_days(conn, self.backfill_id))

    def _decide(self, conn: psycopg.Connection[Any], targets: set[str], pending: dict[int, list[date]]) -> None:
        for target, numbers in _numbered(self.specs).items():
            if target not in targets:
                continue
            group = [self.specs[no] for no in numbers]
            if not relation_exists(conn, *group[0].target):
                self.waiting.add(target)   # created by a unit, with its declared indexes: decided after it
                continue
            self.waiting.discard(target)
            expected = sum(expected_rows(self.specs[no], pending.get(no, []), self.base_dirs[no]) for no in numbers)
            apply_session_settings(conn, group[0].load)
            if not qualifies(conn, group, expected):
                continue
            try:
                names = indexes.drop_for_load(conn, group[0], None, backfill_id=self.backfill_id)
            except PgstageError as exc:   # a lock not granted in time, DROP not allowed: they stay, as with `keep`
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.rollback()
                logs.emit("backfill indexes kept", backfill_id=self.backfill_id, target=target, why=str(exc))
                continue
            if names:
                logs.emit("backfill indexes dropped", backfill_id=self.backfill_id, target=target, indexes=names,
                          expected_rows=expected)
                self.dropped.extend(names)

    def end(self, conn: psycopg.Connection[Any]) -> tuple[str, ...]:
        """No unit is left (every process sees it so): put back what the backfill dropped, once, whoever comes first."""
        rebuilt: list[str] = []
        for target, group in by_target(self.specs).items():
            apply_session_settings(conn, group[0].load)
            names = indexes.rebuild(conn, group[0], backfill_id=self.backfill_id)
            if names:
                logs.emit("backfill indexes rebuilt", backfill_id=self.backfill_id, target=target, indexes=names)
                rebuilt.extend(names)
        return tuple(rebuilt)


def _numbered(specs: Sequence[Spec]) -> dict[str, list[int]]:
    """Spec numbers by the target they write."""
    out: dict[str, list[int]] = {}
    for no, spec in enumerate(specs):
        out.setdefault(spec.pipeline.target, []).append(no)
    return out
