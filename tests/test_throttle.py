"""Throttling against real pressure: a streaming replica whose replay is paused or which is
stopped, a user's throttle_query, other sessions running statements.

Pauses are proven by facts — the throttle's log events, the run still `running` in the
ledger while no pgstage session holds a transaction, `pgstage.pauses` rows by reason, the
report's throttled_s — never by timing.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

import pgstage
from pgstage import faults, throttle
from pgstage.ops import logs
from pgstage.errors import ExitStatus, ThrottleQueryFailed, ThrottleTimeout
from tests import replica as replicas
from tests import specs
from tests.conftest import assert_identity

ROWS, BATCH, CHUNK = 6000, 1000, 500
NOTE = "n" * 200   # ~300 bytes of WAL a row: each merge chunk writes well over 64 kB


def spec_text(load: str, *, workers: int = 2) -> str:
    return textwrap.dedent(specs.template(
        name="thr", target="app.notes", path="notes.csv", columns=specs.NOTES,
        load=f"batch_rows = {BATCH}\nworkers = {workers}\nmerge_chunk_rows = {CHUNK}\nthrottle_timeout = \"2min\"\n{load}"
    ).format())


def write_notes(folder: Path, rows: int = ROWS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["id,note", *(f"{i},{NOTE}{i}" for i in range(1, rows + 1))]
    (folder / "notes.csv").write_text("\n".join(lines) + "\n")


def query(url: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(text, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def check_loaded(url: str, report: pgstage.RunReport, rows: int = ROWS) -> None:
    """Exactly every record once: the table against the file, the counts against its size."""
    assert_identity(report)
    assert report.status == "succeeded"
    assert report.counts.as_dict() == {"read": rows, "rejected": 0, "valid": rows, "duplicate": 0, "inserted": rows,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert query(url, "SELECT count(*), count(DISTINCT id), min(id), max(id), bool_and(note = %s || id)"
                      " FROM app.notes", (NOTE,)) == [(rows, rows, 1, rows, True)]


class Events:
    """The throttle's run events (pgstage/ops/logs.py), as a run in another thread emits them."""

    def __init__(self) -> None:
        self.paused, self.resumed = threading.Event(), threading.Event()
        self.messages: list[str] = []

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event in ("run paused", "run resumed"):
            self.messages.append(f"{event}: {fields}")
        (self.paused if event == "run paused" else self.resumed if event == "run resumed" else
         threading.Event()).set()


@pytest.fixture
def events() -> Iterator[Events]:
    listener = Events()
    stop = logs.listen(listener)
    yield listener
    stop()


class Background:
    """pgstage.run in a thread; `result()` is its report or raises its error."""

    def __init__(self, spec: Path, url: str) -> None:
        self.outcome: list[Any] = []
        self.thread = threading.Thread(target=self._run, args=(spec, url), name="throttled-run")
        self.thread.start()

    def _run(self, spec: Path, url: str) -> None:
        try:
            self.outcome.append(pgstage.run(spec, db=url))
        except BaseException as exc:  # handed to the test thread
            self.outcome.append(exc)

    def paused(self, events: Events, timeout: float = 180) -> None:
        """Until the throttle says it paused; fails at once if the run ended instead."""
        deadline = time.monotonic() + timeout
        while not events.paused.wait(0.1):
            if not self.thread.is_alive():
                raise AssertionError(f"the run ended without pausing: {self.outcome}")
            assert time.monotonic() < deadline, events.messages

    def result(self, timeout: float = 300) -> pgstage.RunReport:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not finish"
        if isinstance(self.outcome[0], BaseException):
            raise self.outcome[0]
        return self.outcome[0]  # type: ignore[no-any-return]


def wait_until_idle_while_paused(url: str, timeout: float = 60) -> None:
    """While the run is paused, every pgstage session ends up outside any transaction, holding no
    lock but the pipeline's advisory lock (a validation or merge already under way finishes first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = query(url, "SELECT count(*) FILTER (WHERE a.xact_start IS NOT NULL),"
                          " (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity b USING (pid)"
                          "  WHERE b.application_name = 'pgstage' AND l.locktype <> 'advisory')"
                          " FROM pg_stat_activity a WHERE a.application_name = 'pgstage'")
        if busy == [(0, 0)]:
            return
        time.sleep(0.1)
    raise AssertionError("pgstage sessions kept a transaction open while paused")


def still_running(url: str) -> bool:
    return query(url, "SELECT status FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [("running",)]


# --- a real primary and a real streaming replica ------------------------------------------------------

@pytest.fixture(scope="module")
def replication(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory the server's OS user can enter (a test's tmp_path is private to root)."""
    if os.environ.get("PGSTAGE_TEST_DSN"):
        pytest.skip("the replica tests start their own primary from the embedded wheel")
    base = tmp_path_factory.mktemp("replication")
    os.chmod(base, 0o755)
    return base


@pytest.fixture(scope="module")
def primary(replication: Path) -> str:
    return replicas.make_primary(replication)


@pytest.fixture
def primary_db(primary: str) -> Iterator[str]:
    name = f"throttle_{os.getpid()}_{time.monotonic_ns()}"
    query(primary, f'CREATE DATABASE "{name}"')
    yield make_conninfo(primary, dbname=name)
    query(primary, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def replica(primary: str, primary_db: str, replication: Path) -> Iterator[replicas.Replica]:
    # after the test database exists, so it starts caught up
    standby = replicas.create(primary, replication / f"standby{time.monotonic_ns()}")
    yield standby
    standby.stop()


# The time signal needs time: a replica behind by bytes has lagged at least as long as its replay
# position has stood still, which takes two checks to see. A load of 6,000 rows may be over before
# the second, so that case loads more rows and checks more often.
@pytest.mark.parametrize("limit, reason, rows", [('max_replica_lag_bytes = "64kB"', throttle.REPLICA_LAG_BYTES, ROWS),
                                                 ('max_replica_lag = "300ms"', throttle.REPLICA_LAG, 30_000)])
def test_paused_replay_pauses_the_load_until_it_resumes(tmp_path: Path, primary_db: str, replica: replicas.Replica,
                                                       events: Events, monkeypatch: pytest.MonkeyPatch, limit: str,
                                                       reason: str, rows: int) -> None:
    monkeypatch.setattr(throttle, "CHECK_INTERVAL_S", 0.05)
    write_notes(tmp_path / "p", rows)
    (tmp_path / "p" / "spec.toml").write_text(spec_text(limit))
    replica.execute("SELECT pg_wal_replay_pause()")
    run = Background(tmp_path / "p" / "spec.toml", primary_db)
    run.paused(events)
    wait_until_idle_while_paused(primary_db)
    assert still_running(primary_db)
    assert not events.resumed.is_set()
    replica.execute("SELECT pg_wal_replay_resume()")
    report = run.result()
    check_loaded(primary_db, report, rows)
    assert events.resumed.is_set()
    assert reason in report.throttled_s and report.throttled_s[reason] > 0
    pauses = query(primary_db, "SELECT reason, detail FROM pgstage.pauses WHERE run_id = %s", (report.run_id,))
    assert pauses and {r for r, _ in pauses} == {reason}
    assert all("replica replica1" in detail for _, detail in pauses), pauses
    assert report.as_dict()["throttled_s"] == report.throttled_s
    # and the replica, replaying again, has every row
    replica.wait_streaming()
    replica_url = make_conninfo(replica.url, dbname=psycopg.conninfo.conninfo_to_dict(primary_db)["dbname"])
    assert query(replica_url, "SELECT count(*) FROM app.notes") == [(rows,)]


def test_a_stopped_replica_fails_the_run_after_throttle_timeout_and_the_rerun_finishes_exactly_once(
        tmp_path: Path, primary_db: str, replica: replicas.Replica, events: Events,
        monkeypatch: pytest.MonkeyPatch) -> None:
    write_notes(tmp_path / "s")
    spec = tmp_path / "s" / "spec.toml"
    spec.write_text(spec_text('max_replica_lag_bytes = "64MB"').replace('throttle_timeout = "2min"',
                                                                        'throttle_timeout = "2s"'))
    stopped: list[str] = []

    def stop_replica(point: str) -> None:
        if point == "merge.after" and not stopped:   # the first batch is merged, with the replica seen
            stopped.append(point)
            replica.stop()
            while query(primary_db, "SELECT count(*) FROM pg_stat_replication") != [(0,)]:
                time.sleep(0.05)   # until the primary has noticed

    monkeypatch.setattr(faults, "hit", stop_replica)
    monkeypatch.setattr(throttle, "CHECK_INTERVAL_S", 0.0)   # check at every safe point: the next one is the test
    with pytest.raises(ThrottleTimeout) as failed:
        pgstage.run(spec, db=primary_db)
    message = str(failed.value)
    assert "replica replica1 is not connected: its lag cannot be measured" in message
    assert "max_replica_lag_bytes = 64MB" in message and "throttle_timeout = 2 s" in message
    assert "the next run resumes from the last checkpoint" in message
    assert failed.value.exit_code == ExitStatus.FAILED
    run_id, status, failure = query(primary_db, "SELECT run_id, status, message FROM pgstage.runs")[0]
    assert status == "failed" and "replica replica1 is not connected" in failure
    merged = query(primary_db, "SELECT count(*) FROM pgstage.batches WHERE status = 'merged'")[0][0]
    assert 1 <= merged < ROWS // BATCH
    assert query(primary_db, "SELECT reason FROM pgstage.pauses") == [(throttle.REPLICA_GONE,)]

    monkeypatch.undo()
    report = pgstage.run(spec, db=primary_db)   # the replica is still down; this run never saw it
    assert report.run_id == run_id
    check_loaded(primary_db, report)
    assert query(primary_db, "SELECT attempts FROM pgstage.runs WHERE run_id = %s", (run_id,)) == [(2,)]
    assert report.throttled_s == {throttle.REPLICA_GONE: pytest.approx(report.throttled_s[throttle.REPLICA_GONE])}


# --- throttle_query and max_active_sessions, on the session's server -------------------------------------

def test_throttle_query_pauses_the_run_while_it_is_true(loader, db_url: str, sql, events: Events) -> None:
    sql("CREATE SCHEMA ops; CREATE TABLE ops.freeze (why text); INSERT INTO ops.freeze VALUES ('month end')")
    write_notes(loader.root)
    loader.spec(spec_text('throttle_query = "select exists (select 1 from ops.freeze)"'))
    run = Background(loader.root / "spec.toml", db_url)
    run.paused(events)
    wait_until_idle_while_paused(db_url)
    assert still_running(db_url)
    sql("DELETE FROM ops.freeze")
    report = run.result()
    check_loaded(db_url, report)
    assert list(report.throttled_s) == [throttle.THROTTLE_QUERY]
    assert sql("SELECT reason, detail FROM pgstage.pauses") == [(throttle.THROTTLE_QUERY, "throttle_query is true")]


def test_max_active_sessions_pauses_the_run_while_others_are_busy(loader, db_url: str, sql, events: Events) -> None:
    sleepers = [psycopg.connect(db_url, autocommit=True, application_name="shop") for _ in range(2)]
    threads = [threading.Thread(target=_sleep, args=(c,)) for c in sleepers]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shop' AND state = 'active'") != [(2,)]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        write_notes(loader.root)
        loader.spec(spec_text("max_active_sessions = 1"))
        run = Background(loader.root / "spec.toml", db_url)
        run.paused(events)
        wait_until_idle_while_paused(db_url)
        assert still_running(db_url)
        sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'shop'")
        report = run.result()
    finally:
        for t in threads:
            t.join(60)
        for c in sleepers:
            c.close()
    check_loaded(db_url, report)
    assert list(report.throttled_s) == [throttle.ACTIVE_SESSIONS]
    details = [d for (d,) in sql("SELECT detail FROM pgstage.pauses")]
    assert details and all(d.endswith("active sessions > 1") for d in details), details
    assert any(d.startswith("2 ") or d.startswith("3 ") for d in details), details


def test_throttled_merges_still_run_side_by_side(loader, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unchunked, a throttled merge waits only for the batch before it to open its transaction (past
    its last check), not to commit: the two workers' merges overlap, as unthrottled ones do."""
    from pgstage.pipeline import merge

    spans: list[tuple[float, float]] = []
    real = merge.merge

    def slow(*args: Any, **kwargs: Any) -> Any:   # each merge holds its transaction 0.3 s longer
        began = time.monotonic()
        counts = real(*args, **kwargs)
        time.sleep(0.3)
        spans.append((began, time.monotonic()))
        return counts

    monkeypatch.setattr(merge, "merge", slow)
    write_notes(loader.root)
    loader.spec(textwrap.dedent(specs.template(
        name="thr", target="app.notes", path="notes.csv", columns=specs.NOTES,
        load=f'batch_rows = {BATCH}\nworkers = 2\nthrottle_query = "select false"\n').format()))
    report = loader.run()
    check_loaded(db_url, report)
    assert len(spans) == ROWS // BATCH
    spans.sort()
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def _sleep(conn: psycopg.Connection[Any]) -> None:
    try:
        conn.execute("SELECT pg_sleep(120)")
    except psycopg.errors.QueryCanceled:
        pass


# --- bad input and the pieces ------------------------------------------------------------------------

def test_a_failing_throttle_query_stops_the_run_before_anything_is_written(loader, db_url: str, sql) -> None:
    write_notes(loader.root)
    loader.spec(spec_text('throttle_query = "select exists (select 1 from ops.no_such_table)"'))
    with pytest.raises(ThrottleQueryFailed) as failed:
        loader.run()
    assert str(failed.value) == (
        'load.throttle_query failed: relation "ops.no_such_table" does not exist\n'
        "  hint: it must be one read-only SELECT returning true (pause) or false, within 5s")
    assert sql("SELECT to_regclass('app.notes')") == [(None,)]
    assert sql("SELECT status, message FROM pgstage.runs") == [("failed", str(failed.value))]
    assert sql("SELECT count(*) FROM pgstage.batches") == [(0,)]


@pytest.mark.parametrize("query, refusal", [
    ("select nextval('ops.s') > 0", "cannot execute nextval() in a read-only transaction"),
    ("select false; drop table ops.t", 'syntax error at or near ";"'),
])
def test_a_throttle_query_cannot_write(loader, db_url: str, sql, query: str, refusal: str) -> None:
    sql("CREATE SCHEMA ops; CREATE TABLE ops.t (x int); CREATE SEQUENCE ops.s")
    write_notes(loader.root)
    loader.spec(spec_text(f'throttle_query = "{query}"'))
    with pytest.raises(ThrottleQueryFailed) as failed:
        loader.run()
    assert f"load.throttle_query failed: {refusal}" in str(failed.value)
    assert sql("SELECT count(*), (SELECT last_value FROM ops.s) FROM ops.t") == [(0, 1)]
    assert sql("SELECT to_regclass('app.notes')") == [(None,)]


@pytest.mark.parametrize("line, problem", [
    ('max_replica_lag = "30"', 'load.max_replica_lag: expected a duration with its unit, such as "30s" or "10min", got \'30\''),
    ('throttle_timeout = "soon"', 'load.throttle_timeout: expected a duration with its unit, such as "30s" or "10min",'
                                  ' got \'soon\''),
    ('max_replica_lag_bytes = "1 gigabyte"', 'load.max_replica_lag_bytes: expected a size such as "1GB" or "64MB",'
                                             ' got \'1 gigabyte\''),
    ("max_active_sessions = 0", "load.max_active_sessions: Input should be greater than or equal to 1"),
    ('maintenance_work_mem = "lots"', 'load.maintenance_work_mem: expected a size such as "256MB", got \'lots\''),
])
def test_bad_throttle_settings_are_spec_errors(loader, sql, line: str, problem: str) -> None:
    write_notes(loader.root)
    text = spec_text(line) if not line.startswith("throttle_timeout") else spec_text("").replace(
        'throttle_timeout = "2min"', line)
    loader.spec(text)
    with pytest.raises(pgstage.SpecError) as err:
        loader.run()
    assert any(p.endswith(problem) for p in err.value.problems), err.value.problems
    assert err.value.exit_code == ExitStatus.USAGE
    assert sql("SELECT to_regnamespace('pgstage')") == [(None,)]


def test_settings_parse_as_postgresql_counts() -> None:
    assert throttle.seconds("30s") == 30 and throttle.seconds("10min") == 600 and throttle.seconds("1.5h") == 5400
    assert throttle.seconds("250ms") == 0.25
    assert throttle.size_bytes("1GB") == 1024 ** 3 and throttle.size_bytes("64kB") == 65536
    assert throttle.size_bytes("4096") == 4096


@given(limit=st.integers(1, 10 ** 9), value=st.integers(0, 2 * 10 ** 9))
def test_hysteresis_pauses_above_the_limit_and_resumes_below_half(limit: int, value: int) -> None:
    assert throttle._over(value, limit, 1.0) == (value > limit)
    assert throttle._over(value, limit, 0.5) == (value * 2 >= limit)
    if throttle._over(value, limit, 1.0):       # what pauses keeps the pause going
        assert throttle._over(value, limit, 0.5)


def test_unthrottled_runs_never_query_the_primary(loader, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[bool] = []

    def pressures(self: throttle.Throttle, conn: Any, *, paused: bool) -> list[throttle.Pressure]:
        asked.append(paused)
        return []

    monkeypatch.setattr(throttle.Throttle, "pressures", pressures)
    write_notes(loader.root)
    loader.spec(spec_text(""))
    check_loaded(db_url, loader.run())
    assert asked == []


def test_the_cli_reports_paused_seconds_by_reason(loader, db_url: str, sql) -> None:
    """A throttle_query true until a moment a few seconds ahead: the run pauses, then resumes by itself."""
    from typer.testing import CliRunner

    from pgstage.cli import app

    until = sql("SELECT (clock_timestamp() + interval '4 seconds')::text")[0][0]
    write_notes(loader.root)
    loader.spec(spec_text(f"throttle_query = \"select clock_timestamp() < '{until}'::timestamptz\""))
    result = CliRunner().invoke(app, ["run", str(loader.root / "spec.toml"), "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)   # stderr has the pause's warning lines
    assert doc["status"] == "succeeded" and doc["rows"]["inserted"] == ROWS
    assert list(doc["throttled_s"]) == [throttle.THROTTLE_QUERY] and doc["throttled_s"][throttle.THROTTLE_QUERY] > 0
    paused = sql("SELECT sum(seconds) FROM pgstage.pauses WHERE reason = 'throttle_query'")[0][0]
    assert doc["throttled_s"][throttle.THROTTLE_QUERY] == pytest.approx(paused, abs=0.001)
    sql("TRUNCATE app.notes; TRUNCATE pgstage.files")   # again, rendered for a terminal
    until = sql("SELECT (clock_timestamp() + interval '4 seconds')::text")[0][0]
    loader.spec(spec_text(f"throttle_query = \"select clock_timestamp() < '{until}'::timestamptz\""))
    result = CliRunner().invoke(app, ["run", str(loader.root / "spec.toml"), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert re.search(r"paused by the throttle: throttle_query \d+\.\ds", result.output), result.output
