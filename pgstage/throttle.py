"""Throttling: pause a load while the primary it writes to is under pressure (SPEC §9).

A run asks `Throttle.wait(session)` at its safe points: before each COPY window is sent,
before each batch's validation, and before each merge chunk. Each is a point where the
session holds no transaction and no row or table lock (`wait` refuses to pause otherwise),
so production never queues behind a paused load. The pipeline's advisory lock is the only
thing kept: it locks no data.

Pressure is read on the primary, never on a replica:

- replica lag in bytes: `pg_current_wal_lsn() - replay_lsn` of each `pg_stat_replication`
  row. Exact, and zero on an idle primary.
- replica lag in time: `replay_lag`, which PostgreSQL measures only while WAL flows (it is
  NULL once a caught-up standby sees no new WAL) and which stops growing while replay is
  stuck (no new sample arrives). So a replica that is 0 bytes behind has no lag, however
  quiet the primary (`now() - pg_last_xact_replay_timestamp()` on a replica grows on an idle
  primary: false lag), and a replica that is behind has at least the time its `replay_lsn`
  has stood still, as this process observed it.
- a replica seen earlier in the run that is no longer connected: its lag cannot be measured,
  which counts as pressure until it is back (or `throttle_timeout`).
- `max_active_sessions`: active client sessions of the server that are not pgstage's.
- `throttle_query`: the user's own SQL, run read-only; pause while it returns true.

Each pause is a run event (pgstage/ops/logs.py): `run paused` with its reason and detail when it
starts, `run resumed` with its seconds when it ends, so the JSON log and the progress bar see it.
A pause still on after `alert_after_s` calls `on_long_pause` once per attempt (the `paused` alert).

Hysteresis: once paused, a measure must fall below half its limit before the run resumes,
so a load hovering at the limit does not flap. Sleeps back off exponentially, capped. After
`throttle_timeout` of one continuous pause the run fails (ThrottleTimeout), resumable from
its last checkpoint. Every pause is a row of `pgstage.pauses` (run, reason, seconds), from
which the report's `throttled_s` is summed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import DatabaseError, ThrottleQueryFailed, ThrottleTimeout, Transient
from pgstage.ops import logs
from pgstage.spec import LoadSection

# A clear check is trusted this long: a COPY window every few milliseconds must not cost a
# query each; pressure builds over seconds, not milliseconds.
CHECK_INTERVAL_S = 1.0
BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 8.0
# How long the user's throttle_query may run before it counts as failed.
QUERY_TIMEOUT = "5s"

# Reasons, as the ledger and the report name them.
REPLICA_LAG = "replica_lag"
REPLICA_LAG_BYTES = "replica_lag_bytes"
REPLICA_GONE = "replica_gone"
ACTIVE_SESSIONS = "active_sessions"
THROTTLE_QUERY = "throttle_query"


_UNITS = {"ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_SIZES = {"": 1, "b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}


def seconds(text: str) -> float:
    """"30s", "10min", "1.5h" → seconds (the spec's pattern has checked the form)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", text)
    assert match, text
    return float(match[1]) * _UNITS[match[2]]


def size_bytes(text: str) -> int:
    """"1GB", "64MB", "4096" → bytes (1 kB = 1024 B, as PostgreSQL counts)."""
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", text)
    assert match, text
    return int(match[1]) * _SIZES[match[2].lower()]


@dataclass(frozen=True)
class Limits:
    """The `[load]` throttle settings, parsed once."""

    lag_s: float | None = None
    lag_bytes: int | None = None
    sessions: int | None = None
    query: str | None = None
    timeout_s: float = 600.0
    # The settings as written, for messages ("max_replica_lag = 30s").
    words: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, load: LoadSection) -> "Limits":
        words = {name: str(getattr(load, name)) for name in
                 ("max_replica_lag", "max_replica_lag_bytes", "max_active_sessions", "throttle_query")
                 if getattr(load, name) is not None}
        return cls(seconds(load.max_replica_lag) if load.max_replica_lag else None,
                   size_bytes(load.max_replica_lag_bytes) if load.max_replica_lag_bytes else None,
                   load.max_active_sessions, load.throttle_query, seconds(load.throttle_timeout), words)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.lag_s, self.lag_bytes, self.sessions, self.query))

    @property
    def watches_replicas(self) -> bool:
        return self.lag_s is not None or self.lag_bytes is not None


@dataclass(frozen=True)
class Replica:
    """One `pg_stat_replication` row as the primary sees it."""

    name: str
    behind_bytes: int | None      # None: not visible to this role (needs pg_monitor)
    replay_lag_s: float | None
    replay_lsn: str | None


@dataclass(frozen=True)
class Pressure:
    """Why a run pauses: one measure at or over its limit."""

    reason: str
    detail: str                   # "replica lag 42s > 30s (replica r1)"
    setting: str                  # the [load] key whose limit it is


# --- what is read (pure builders) ------------------------------------------------------------------

def build_replicas() -> sql.Composed:
    """Every connected standby with its byte distance and replay lag, read on the primary."""
    return sql.SQL(
        "SELECT coalesce(nullif(application_name, ''), client_addr::text, 'pid ' || pid),"
        " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint, extract(epoch FROM replay_lag)::float8,"
        " replay_lsn::text FROM pg_stat_replication ORDER BY 1").format()


def build_active_sessions() -> sql.Composed:
    """Client sessions of the whole server running a statement now, pgstage's own left out."""
    return sql.SQL(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active'"
        " AND pid <> pg_backend_pid() AND application_name NOT LIKE 'pgstage%%'").format()


def build_user_query(query: str) -> sql.Composed:
    """The user's throttle_query (SQL by design, like a [checks] predicate), its first column read as a boolean."""
    return sql.SQL("SELECT ({})::boolean").format(sql.SQL(query))  # type: ignore[arg-type]


# Called with the paused session (outside any transaction), the pressure holding the run and its seconds.
LongPause = Callable[[psycopg.Connection[Any], "Pressure", float], None]


# --- the throttle -----------------------------------------------------------------------------------

class Throttle:
    """One per run attempt, shared by its threads: one of them checks and pauses, the others wait on it."""

    def __init__(self, limits: Limits, run_id: int | None, *, pipeline: str | None = None, partition: str | None = None,
                 alert_after_s: float | None = None, on_long_pause: LongPause | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.run_id = run_id
        self.pipeline, self.partition = pipeline, partition
        self.alert_after_s, self.on_long_pause = alert_after_s, on_long_pause
        self._alerted = False                         # the long-pause alert goes out once per attempt
        self._clock = clock
        self._lock = threading.Lock()
        self._clear_until = 0.0
        self._known: set[str] = set()                 # replicas seen during the run
        self._stalled: dict[str, tuple[str, float]] = {}   # replica → (replay_lsn, first seen there while behind)
        self.paused_s: dict[str, float] = {}          # this attempt's paused seconds by reason
        self.status: str | None = None                # "paused: replica lag 42s > 30s" while paused

    def wait(self, conn: psycopg.Connection[Any], where: str) -> None:
        """Return when the primary is under no pressure; pause (sleeping, backing off) while it is.

        Raises ThrottleTimeout after `throttle_timeout` of one pause.
        """
        if not self.limits.active:
            return
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            raise AssertionError(f"throttle at {where}: the session is inside a transaction")
        with self._lock:
            now = self._clock()
            if now < self._clear_until:
                return
            found = self.pressures(conn, paused=False)
            if not found:
                self._clear_until = self._clock() + CHECK_INTERVAL_S
                return
            self._pause(conn, where, found)
            self._clear_until = self._clock() + CHECK_INTERVAL_S

    def _pause(self, conn: psycopg.Connection[Any], where: str, found: list[Pressure]) -> None:
        started, wall = self._clock(), time.time()
        first = found[0]
        self.status = f"paused: {first.detail}"
        self._event("run paused", reason=first.reason, detail="; ".join(p.detail for p in found), where=where)
        sleep, latest = BACKOFF_START_S, first
        try:
            while True:
                waited = self._clock() - started
                if waited >= self.limits.timeout_s:   # the message names what holds the run now
                    self._record(conn, first, wall, waited)
                    raise ThrottleTimeout(
                        f"paused {waited:.0f} s before {where} and gave up: {latest.detail}"
                        f" ({latest.setting} = {self.limits.words.get(latest.setting, '?')},"
                        f" throttle_timeout = {self.limits.timeout_s:g} s)",
                        hint="the next run resumes from the last checkpoint; "
                             + ("check the replica named above" if latest.reason.startswith("replica")
                                else f"see why {latest.setting} is exceeded") + ", or raise load.throttle_timeout")
                time.sleep(min(sleep, max(self.limits.timeout_s - waited, 0.0)))
                sleep = min(sleep * 2, BACKOFF_MAX_S)
                found = self.pressures(conn, paused=True)
                if not found:
                    break
                latest = found[0]
                self.status = f"paused: {latest.detail}"
                self._maybe_alert(conn, latest, self._clock() - started)
        finally:
            self.status = None
        waited = self._clock() - started
        self._record(conn, first, wall, waited)
        self._event("run resumed", reason=first.reason, where=where, seconds=round(waited, 3))

    def _event(self, event: str, **fields: Any) -> None:
        logs.emit(event, run_id=self.run_id, pipeline=self.pipeline, partition=self.partition, **fields)

    def _maybe_alert(self, conn: psycopg.Connection[Any], pressure: Pressure, waited: float) -> None:
        """Tell people once when a pause outlasts `alert_after_s`: the run still waits, it has not failed."""
        if self._alerted or self.on_long_pause is None or self.alert_after_s is None or waited < self.alert_after_s:
            return
        self._alerted = True
        self.on_long_pause(conn, pressure, waited)

    def _record(self, conn: psycopg.Connection[Any], pressure: Pressure, wall: float, waited: float) -> None:
        self.paused_s[pressure.reason] = self.paused_s.get(pressure.reason, 0.0) + waited
        if self.run_id is not None:
            record_pause(conn, self.run_id, pressure.reason, pressure.detail, wall, waited)

    # --- measures ---

    def pressures(self, conn: psycopg.Connection[Any], *, paused: bool) -> list[Pressure]:
        """Every measure over its limit (over half of it while paused: the hysteresis)."""
        share = 0.5 if paused else 1.0
        limits, found = self.limits, []
        if limits.watches_replicas:
            found += self._replica_pressures(conn, share)
        if limits.sessions is not None:
            row = execute(conn, build_active_sessions(), label="throttle: active sessions").fetchone()
            active = int(row[0]) if row else 0
            if _over(active, limits.sessions, share):
                found.append(Pressure(ACTIVE_SESSIONS, f"{active} active sessions > {limits.sessions}",
                                      "max_active_sessions"))
        if limits.query is not None and self._query_says_pause(conn):
            found.append(Pressure(THROTTLE_QUERY, "throttle_query is true", "throttle_query"))
        return found

    def _replica_pressures(self, conn: psycopg.Connection[Any], share: float) -> list[Pressure]:
        limits, now, found = self.limits, self._clock(), []
        rows = execute(conn, build_replicas(), label="throttle: replicas").fetchall()
        replicas = [Replica(name, None if behind is None else int(behind), lag, lsn) for name, behind, lag, lsn in rows]
        seen = {r.name for r in replicas}
        for gone in sorted(self._known - seen):
            found.append(Pressure(REPLICA_GONE, f"replica {gone} is not connected: its lag cannot be measured",
                                  "max_replica_lag" if limits.lag_s is not None else "max_replica_lag_bytes"))
        self._known |= seen
        for r in replicas:
            if r.behind_bytes is None:
                found.append(Pressure(REPLICA_GONE, f"the lag of replica {r.name} is not visible to this role"
                                                    " (grant it pg_monitor)",
                                      "max_replica_lag" if limits.lag_s is not None else "max_replica_lag_bytes"))
                continue
            if limits.lag_bytes is not None and _over(r.behind_bytes, limits.lag_bytes, share):
                found.append(Pressure(REPLICA_LAG_BYTES, f"replica {r.name} is {_size(r.behind_bytes)} behind"
                                      f" > {limits.words['max_replica_lag_bytes']}", "max_replica_lag_bytes"))
            if limits.lag_s is not None:
                lag = self._lag_seconds(r, now)
                if _over(lag, limits.lag_s, share):
                    found.append(Pressure(REPLICA_LAG, f"replica lag {lag:.0f}s > {limits.words['max_replica_lag']}"
                                          f" (replica {r.name})", "max_replica_lag"))
        return found

    def _lag_seconds(self, r: Replica, now: float) -> float:
        """replay_lag, or the time replay has stood still while behind if longer; 0 when caught up."""
        if not r.behind_bytes:
            self._stalled.pop(r.name, None)
            return 0.0
        lsn, since = self._stalled.get(r.name, (None, now))
        if lsn != r.replay_lsn:
            since = now
            self._stalled[r.name] = (r.replay_lsn or "", now)
        return max(r.replay_lag_s or 0.0, now - since)

    def _query_says_pause(self, conn: psycopg.Connection[Any]) -> bool:
        try:
            with conn.transaction():
                execute(conn, sql.SQL("SET TRANSACTION READ ONLY"), label="throttle: read only")
                execute(conn, sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(QUERY_TIMEOUT)),
                        label="throttle: query timeout")
                row = execute(conn, build_user_query(self.limits.query or ""), label="throttle: query").fetchone()
        except DatabaseError as exc:
            if isinstance(exc, Transient):   # the connection, not the query: retried as any other
                raise
            raise ThrottleQueryFailed(f"load.throttle_query failed: {exc.diagnostics.message or exc.message}",
                                      hint="it must be one read-only SELECT returning true (pause) or false,"
                                           f" within {QUERY_TIMEOUT}") from exc
        return bool(row and row[0])


def _over(value: float, limit: float, share: float) -> bool:
    """Over the limit (not paused), or not yet below `share` of it (paused)."""
    return value > limit if share >= 1.0 else value >= limit * share


def _size(n: int) -> str:
    for unit, factor in (("GB", 1024 ** 3), ("MB", 1024 ** 2), ("kB", 1024)):
        if n >= factor:
            return f"{n / factor:.1f}{unit}"
    return f"{n}B"


# --- the ledger's record of pauses ---------------------------------------------------------------------

def record_pause(conn: psycopg.Connection[Any], run_id: int, reason: str, detail: str, started: float,
                 paused_s: float) -> None:
    """One pause, committed at once (the session is outside any transaction here)."""
    execute(conn, sql.SQL("INSERT INTO pgstage.pauses (run_id, reason, detail, started_at, seconds)"
                          " VALUES (%s, %s, %s, to_timestamp(%s), %s)"),
            (run_id, reason, detail, started, paused_s), label="throttle: record pause")


def throttled_seconds(conn: psycopg.Connection[Any], run_id: int) -> dict[str, float]:
    """The run's paused seconds by reason, over all its attempts."""
    rows = execute(conn, sql.SQL("SELECT reason, sum(seconds) FROM pgstage.pauses WHERE run_id = %s"
                                 " GROUP BY reason ORDER BY reason"), (run_id,), label="throttle: paused").fetchall()
    return {reason: round(float(s), 3) for reason, s in rows}


def run_pauses(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    """Every pause of the run, oldest first, as `pgstage show` and the report list them."""
    cursor = execute(conn, sql.SQL("SELECT reason, detail, started_at, seconds FROM pgstage.pauses WHERE run_id = %s"
                                   " ORDER BY started_at, reason"), (run_id,), label="throttle: pauses")
    return [{"reason": reason, "detail": detail, "started_at": started, "seconds": round(float(secs), 3)}
            for reason, detail, started, secs in cursor.fetchall()]
