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

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage import indexes
from pgstage.db import execute, relation_exists
from pgstage.errors import TransientDatabaseError
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
    """An estimate of the records the days' files hold: their bytes over the bytes per record of one file's start.

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
    lines = head.count(b"\n")
    return sum(sizes) * lines // len(head) if lines else 0


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


def drop_at_start(conn: psycopg.Connection[Any], backfill_id: int, specs: Sequence[Spec],
                  pending: dict[int, list[date]], base_dirs: Sequence[Path | None]) -> tuple[str, ...]:
    """Drop the secondary indexes of every target that qualifies, once, for the whole backfill.

    `pending`: each spec's (by number) days still to load. The caller holds the backfill (`hold`).
    A target a running load has locked past `lock_timeout` keeps its indexes: the backfill goes on.
    """
    numbered: dict[str, list[int]] = {}
    for no, spec in enumerate(specs):
        numbered.setdefault(spec.pipeline.target, []).append(no)
    dropped: list[str] = []
    for target, numbers in numbered.items():
        group = [specs[no] for no in numbers]
        if not relation_exists(conn, *group[0].target):
            continue   # created by the first unit, with its declared indexes: kept
        expected = sum(expected_rows(specs[no], pending.get(no, []), base_dirs[no]) for no in numbers)
        apply_session_settings(conn, group[0].load)
        if not qualifies(conn, group, expected):
            continue
        try:
            names = indexes.drop_for_load(conn, group[0], None, backfill_id=backfill_id)
        except TransientDatabaseError as exc:   # a lock not granted in time: these indexes stay, as `keep`
            logs.emit("backfill indexes kept", backfill_id=backfill_id, target=target, why=str(exc))
            continue
        if names:
            logs.emit("backfill indexes dropped", backfill_id=backfill_id, target=target, indexes=names,
                      expected_rows=expected)
            dropped.extend(names)
    return tuple(dropped)


def rebuild_at_end(conn: psycopg.Connection[Any], backfill_id: int, specs: Sequence[Spec]) -> tuple[str, ...]:
    """No unit is left (every process sees it so): put back what the backfill dropped, once, whoever comes first."""
    rebuilt: list[str] = []
    for target, group in by_target(specs).items():
        apply_session_settings(conn, group[0].load)
        names = indexes.rebuild(conn, group[0], backfill_id=backfill_id)
        if names:
            logs.emit("backfill indexes rebuilt", backfill_id=backfill_id, target=target, indexes=names)
            rebuilt.extend(names)
    return tuple(rebuilt)
