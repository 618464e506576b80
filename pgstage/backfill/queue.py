"""The backfill queue in the ledger: `pgstage.backfills` and `pgstage.backfill_units`.

A unit is one (spec, day). A worker claims the next eligible unit (its pipeline's first
pending day; or its second, while this process runs the first, for specs whose validation
reads nothing but the record: see `build_claim`) with `FOR UPDATE SKIP LOCKED`
in a transaction that it keeps open while the unit runs (on another session) and that
records the unit's outcome as it commits. A worker killed mid-unit rolls its claim back
with its session, so the unit is pending again and the next claim takes it: no heartbeat,
no lease to expire, and two workers never hold one unit. An idle worker polls while units
are held elsewhere, so it takes over the unit of a process that dies.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pgstage.db import execute
from pgstage.report import Counts

_DDL = [
    """CREATE TABLE IF NOT EXISTS pgstage.backfills (
        backfill_id  bigserial PRIMARY KEY,
        fingerprint  text NOT NULL,
        specs        jsonb NOT NULL,
        first_day    date NOT NULL,
        last_day     date NOT NULL,
        newest_first boolean NOT NULL DEFAULT false,
        created_at   timestamptz NOT NULL DEFAULT now())""",
    """CREATE TABLE IF NOT EXISTS pgstage.backfill_units (
        backfill_id bigint NOT NULL REFERENCES pgstage.backfills,
        spec_no     integer NOT NULL,
        day         date NOT NULL,
        pipeline    text NOT NULL,
        status      text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'succeeded', 'skipped', 'failed')),
        run_id      bigint,
        exit_code   integer,
        message     text,
        duration_s  double precision,
        host        text,
        pid         integer,
        finished_at timestamptz,
        PRIMARY KEY (backfill_id, day, spec_no))""",
]


@dataclass(frozen=True)
class SpecRef:
    """A spec as the queue stores it: enough for another process to load it again."""

    path: str           # absolute
    pipeline: str
    base_dir: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "pipeline": self.pipeline, "base_dir": self.base_dir}


@dataclass(frozen=True)
class Backfill:
    backfill_id: int
    specs: tuple[SpecRef, ...]
    first_day: date
    last_day: date
    newest_first: bool


@dataclass(frozen=True)
class Unit:
    backfill_id: int
    spec_no: int
    day: date
    after: date | None = None   # the pipeline's earlier day this process is still running: merge after it


@dataclass(frozen=True)
class Outcome:
    status: str                 # succeeded | skipped | failed
    run_id: int | None
    exit_code: int
    message: str | None
    duration_s: float
    records: int = 0


def ensure(conn: psycopg.Connection[Any]) -> None:
    """Create the queue's tables if missing, under the ledger's lock (the ledger itself exists already)."""
    with conn.transaction():
        execute(conn, sql.SQL("SET LOCAL lock_timeout = '10s'"), label="backfill: lock timeout")
        execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended('pgstage:ledger', 0))"),
                label="backfill: ledger lock")
        for statement in _DDL:
            execute(conn, sql.SQL(statement), label="backfill: ddl")  # type: ignore[arg-type]


def fingerprint(specs: tuple[SpecRef, ...], first: date, last: date) -> str:
    """What a backfill loads; the same command run again finds its backfill by it and resumes."""
    text = json.dumps([[s.as_dict() for s in specs], first.isoformat(), last.isoformat()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def build_units() -> sql.Composed:
    """Every (spec, day) of the range as a pending unit."""
    return sql.SQL(
        "INSERT INTO pgstage.backfill_units (backfill_id, spec_no, day, pipeline)"
        " SELECT {id}, s.no - 1, d::date, s.spec->>'pipeline'"
        " FROM generate_series({first}::date, {last}::date, interval '1 day') d,"
        " jsonb_array_elements({specs}) WITH ORDINALITY s(spec, no)"
    ).format(id=sql.Placeholder("id"), first=sql.Placeholder("first"), last=sql.Placeholder("last"),
             specs=sql.Placeholder("specs"))


def create_or_resume(conn: psycopg.Connection[Any], specs: tuple[SpecRef, ...], first: date, last: date,
                     newest_first: bool) -> tuple[Backfill, bool]:
    """The newest backfill of these specs and days, or a new one with all its units; (it, resumed?)."""
    mark = fingerprint(specs, first, last)
    with conn.transaction():
        # Two processes started with the same command at once must not create two backfills.
        execute(conn, sql.SQL("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"), (f"pgstage:backfill:{mark}",),
                label="backfill: create lock")
        found = execute(conn, sql.SQL("SELECT backfill_id FROM pgstage.backfills WHERE fingerprint = %s"
                                      " ORDER BY backfill_id DESC LIMIT 1"), (mark,), label="backfill: find").fetchone()
        if found:
            execute(conn, sql.SQL("UPDATE pgstage.backfills SET newest_first = %s WHERE backfill_id = %s"),
                    (newest_first, found[0]), label="backfill: order")
            return Backfill(found[0], specs, first, last, newest_first), True
        row = execute(conn, sql.SQL(
            "INSERT INTO pgstage.backfills (fingerprint, specs, first_day, last_day, newest_first)"
            " VALUES (%s, %s, %s, %s, %s) RETURNING backfill_id"),
            (mark, Jsonb([s.as_dict() for s in specs]), first, last, newest_first), label="backfill: create").fetchone()
        assert row is not None
        execute(conn, build_units(),
                {"id": row[0], "first": first, "last": last, "specs": Jsonb([s.as_dict() for s in specs])},
                label="backfill: units")
    return Backfill(row[0], specs, first, last, newest_first), False


def find(conn: psycopg.Connection[Any], backfill_id: int) -> Backfill | None:
    row = execute(conn, sql.SQL("SELECT specs, first_day, last_day, newest_first FROM pgstage.backfills"
                                " WHERE backfill_id = %s"), (backfill_id,), label="backfill: join").fetchone()
    if row is None:
        return None
    specs = tuple(SpecRef(s["path"], s["pipeline"], s.get("base_dir")) for s in row[0])
    return Backfill(backfill_id, specs, row[1], row[2], row[3])


def retry_failed(conn: psycopg.Connection[Any], backfill_id: int) -> int:
    """Failed units back to pending (`--retry-failed`); how many."""
    return execute(conn, sql.SQL("UPDATE pgstage.backfill_units SET status = 'pending' WHERE backfill_id = %s"
                                 " AND status = 'failed'"), (backfill_id,), label="backfill: retry failed").rowcount


def build_claim() -> sql.Composed:
    """The next unit to run, locked by the caller's transaction; no row when every eligible unit is held.

    A pipeline's first pending day is eligible (its last with newest_first). So is its second,
    for the pipelines in `%(overlap)s`, when its first is among `%(ahead)s` (spec numbers and days
    whose runs this process has started): that unit stages and validates while the first merges,
    and merges after it (the caller waits for it: `Unit.after`). Days therefore merge one at a
    time and in order, exactly as one-by-one runs would: a later day's rows win under `upsert`
    and the ledger's counts do not depend on which job was faster. First days go before second
    ones; different pipelines run side by side. A held day is skipped (SKIP LOCKED), not waited
    for: the caller polls. One windowed pass over the backfill's pending units ranks each
    pipeline's days (not a subquery per row), so a claim costs O(units).
    """
    return sql.SQL(
        "SELECT u.spec_no, u.day, head.ahead FROM pgstage.backfill_units u JOIN pgstage.backfills b USING (backfill_id)"
        " JOIN (SELECT v.spec_no, v.day, row_number() OVER w AS rank, lag(v.day) OVER w AS ahead"
        " FROM pgstage.backfill_units v JOIN pgstage.backfills x USING (backfill_id)"
        " WHERE v.backfill_id = %(id)s AND v.status = 'pending'"
        " WINDOW w AS (PARTITION BY v.spec_no ORDER BY CASE WHEN x.newest_first THEN v.day END DESC, v.day)) head"
        " USING (spec_no, day)"
        " WHERE u.backfill_id = %(id)s AND u.status = 'pending'"
        " AND (head.rank = 1 OR (head.rank = 2 AND u.spec_no = ANY(%(overlap)s::integer[])"
        " AND (u.spec_no, head.ahead) IN (SELECT * FROM unnest(%(ahead_specs)s::integer[], %(ahead_days)s::date[]))))"
        " ORDER BY head.rank, CASE WHEN b.newest_first THEN u.day END DESC, u.day, u.spec_no"
        " LIMIT 1 FOR UPDATE OF u SKIP LOCKED").format()


def claim(conn: psycopg.Connection[Any], backfill_id: int, overlap: Sequence[int] = (),
          ahead: Sequence[tuple[int, date]] = ()) -> Unit | None:
    """Inside the caller's open transaction: the unit it now holds until it commits.

    None when no unit is free: none is pending, or every pipeline's next day is held by
    another job (`statuses()` tells the two apart: held units still count as pending).
    `overlap`, `ahead`: see `build_claim`; without them a pipeline's days run one at a time.
    """
    row = execute(conn, build_claim(), {"id": backfill_id, "overlap": list(overlap),
                                        "ahead_specs": [s for s, _ in ahead], "ahead_days": [d for _, d in ahead]},
                  label="backfill: claim").fetchone()
    if not row:
        return None
    return Unit(backfill_id, int(row[0]), row[1], row[2])   # `ahead` is NULL for a first day


def finish(conn: psycopg.Connection[Any], unit: Unit, outcome: Outcome) -> None:
    """Record the unit's outcome; it commits with the claim's transaction, which releases the unit."""
    execute(conn, sql.SQL(
        "UPDATE pgstage.backfill_units SET status = %s, run_id = %s, exit_code = %s, message = %s, duration_s = %s,"
        " host = %s, pid = %s, finished_at = clock_timestamp() WHERE backfill_id = %s AND day = %s AND spec_no = %s"),
        (outcome.status, outcome.run_id, outcome.exit_code, outcome.message, outcome.duration_s, socket.gethostname(),
         os.getpid(), unit.backfill_id, unit.day, unit.spec_no), label="backfill: finish unit")


def statuses(conn: psycopg.Connection[Any], backfill_id: int) -> dict[str, int]:
    """Units by status, across every process working on the backfill (a unit being run still counts as pending)."""
    rows = execute(conn, sql.SQL("SELECT status, count(*) FROM pgstage.backfill_units WHERE backfill_id = %s"
                                 " GROUP BY status"), (backfill_id,), label="backfill: statuses").fetchall()
    return {"pending": 0, "succeeded": 0, "skipped": 0, "failed": 0, **{s: n for s, n in rows}}


def pending_days(conn: psycopg.Connection[Any], backfill_id: int) -> dict[int, list[date]]:
    """Each spec's (by number) days still to load, held ones included."""
    rows = execute(conn, sql.SQL("SELECT spec_no, day FROM pgstage.backfill_units WHERE backfill_id = %s"
                                 " AND status = 'pending' ORDER BY spec_no, day"), (backfill_id,),
                   label="backfill: pending days").fetchall()
    out: dict[int, list[date]] = {}
    for no, day in rows:
        out.setdefault(no, []).append(day)
    return out


def build_counts() -> sql.Composed:
    """The §5 counts summed over the backfill's succeeded units, from their runs in the ledger."""
    return sql.SQL(
        "SELECT c.key, sum(c.value::bigint) FROM pgstage.backfill_units u JOIN pgstage.runs r USING (run_id),"
        " jsonb_each_text(r.counts) c WHERE u.backfill_id = %s AND u.status = 'succeeded' GROUP BY c.key").format()


def counts(conn: psycopg.Connection[Any], backfill_id: int) -> Counts:
    rows = execute(conn, build_counts(), (backfill_id,), label="backfill: counts").fetchall()
    known = set(Counts.__dataclass_fields__)
    return Counts(**{k: int(v) for k, v in rows if k in known})


def failures(conn: psycopg.Connection[Any], backfill_id: int) -> list[dict[str, Any]]:
    rows = execute(conn, sql.SQL(
        "SELECT pipeline, day, run_id, exit_code, message FROM pgstage.backfill_units"
        " WHERE backfill_id = %s AND status = 'failed' ORDER BY day, spec_no"), (backfill_id,),
        label="backfill: failures").fetchall()
    return [{"pipeline": p, "partition": d.isoformat(), "run_id": r, "exit_code": c, "message": m} for p, d, r, c, m in rows]


def unit_seconds(conn: psycopg.Connection[Any], backfill_id: int) -> float:
    row = execute(conn, sql.SQL("SELECT coalesce(sum(duration_s), 0) FROM pgstage.backfill_units"
                                " WHERE backfill_id = %s AND status <> 'pending'"), (backfill_id,),
                  label="backfill: durations").fetchone()
    return float(row[0]) if row else 0.0
