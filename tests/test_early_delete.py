"""replace_partition's early DELETE (pipeline/merge/early_delete.py): the swap's transaction opened on its
own session while the last batch validates. Whatever refuses or fails the run after that DELETE leaves the
old day whole; readers never see the day empty; a run that may not delete early (dry run, index drop, a
changed target) or whose early session dies still replaces the day exactly."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage.ops import logs
from pgstage.pipeline import ledger
from tests.conftest import assert_identity
from tests.test_replace_partition import write_day, write_spec

OLD = [("1", "2024-01-15 09:00:00+01", "10"), ("2", "2024-01-15 10:00:00+01", "20"),
       ("3", "2024-01-15 23:59:59+01", "30")]
OTHER = [("9", "2024-01-16 00:00:00+01", "90")]   # the next Paris day: never touched
NEW = [("1", "2024-01-15 11:00:00+01", "11"), ("4", "2024-01-15 12:00:00+01", "40")]
BEFORE = [(1, 10), (2, 20), (3, 30), (9, 90)]
AFTER = [(1, 11), (4, 40), (9, 90)]


def loaded(tmp_path: Path, db_url: str, extra: str = "") -> Path:
    """app.events with the 15th (3 rows) and the 16th (1 row) loaded; the 15th's file now holds NEW."""
    spec = write_spec(tmp_path, batch=100)
    if extra:
        spec.write_text(spec.read_text() + extra)
    write_day(tmp_path, "2024-01-16", OTHER)
    pgstage.run(spec, db=db_url, partition="2024-01-16")
    write_day(tmp_path, "2024-01-15", OLD)
    pgstage.run(spec, db=db_url, partition="2024-01-15")
    write_day(tmp_path, "2024-01-15", NEW)
    return spec


def rows(sql: Any) -> list[tuple[int, int]]:
    return sql("SELECT id, amount FROM app.events ORDER BY id")


@contextmanager
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    stop = logs.listen(lambda event, fields: seen.append((event, fields)))
    try:
        yield seen
    finally:
        stop()


def names(seen: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [event for event, _ in seen if "early" in event]


@contextmanager
def held_until_deleted(db_url: str, refusal: str) -> Iterator[list[list[tuple[int, int]]]]:
    """Hold the run at `refusal` (the event its refusal emits) until the early DELETE has run, and note
    what another session reads then: the refusal comes after the DELETE, and readers still see the old day."""
    deleted = threading.Event()
    readings: list[list[tuple[int, int]]] = []

    def listener(event: str, fields: dict[str, Any]) -> None:
        if event == "early delete":
            deleted.set()
        elif event == refusal:
            assert deleted.wait(60), "the early DELETE did not run"
            with psycopg.connect(db_url, autocommit=True) as other:
                readings.append(other.execute("SELECT id, amount FROM app.events ORDER BY id").fetchall())

    stop = logs.listen(listener)
    try:
        yield readings
    finally:
        stop()


def test_the_day_is_replaced_with_its_delete_done_early(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = loaded(tmp_path, db_url)
    with events() as seen:
        report = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert_identity(report)
    assert report.counts.as_dict() == {"read": 2, "rejected": 0, "valid": 2, "duplicate": 0, "inserted": 2,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 3}
    assert rows(sql) == AFTER
    assert names(seen) == ["early delete", "partition deleted early"], [f for e, f in seen if "early" in e]
    assert [f["deleted"] for e, f in seen if e == "partition deleted early"] == [3]
    # the early session is closed with the run: no pgstage session is left behind (a closed session's
    # backend leaves pg_stat_activity a moment after the client hangs up, so wait for it a little)
    for _ in range(100):
        if sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgstage'") == [(0,)]:
            break
        time.sleep(0.1)
    assert sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgstage'") == [(0,)]


def test_reject_limit_after_the_early_delete_leaves_the_day(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = loaded(tmp_path, db_url)
    write_day(tmp_path, "2024-01-15", [("5", "2024-01-15 12:00:00+01", "-1"), ("6", "2024-01-15 13:00:00+01", "-2"),
                                       ("7", "2024-01-15 14:00:00+01", "70")])   # 2 of 3 rejected > 0.5
    with events() as seen, held_until_deleted(db_url, "threshold exceeded") as readings:
        with pytest.raises(pgstage.RejectLimitExceeded) as raised:
            pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert raised.value.exit_code == 3
    assert str(raised.value).startswith("2 of 3 records rejected (66.7%), above max_reject_ratio 0.5: nothing was merged")
    assert readings == [BEFORE]          # the DELETE ran, uncommitted: readers saw the old day
    assert rows(sql) == BEFORE           # and it was rolled back
    assert names(seen) == ["early delete", "early delete rolled back"]
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [("rejected_threshold",)]


def test_anomaly_block_after_the_early_delete_leaves_the_day(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = loaded(tmp_path, db_url, '\n[anomaly]\naction = "block"\n')
    with psycopg.connect(db_url, autocommit=True) as conn:   # 35 earlier days of ~1,000 records each
        ledger.ensure(conn)
        for i in range(35):
            day, n = date(2023, 12, 1) + timedelta(days=i), 1000 + 10 * (i % 7)
            counts = {"read": n, "rejected": 0, "valid": n, "duplicate": 0, "inserted": n, "updated": 0,
                      "unchanged": 0, "stale": 0, "deleted": 0}
            conn.execute("INSERT INTO pgstage.runs (pipeline, partition, target, status, counts, started_at,"
                         " finished_at) VALUES ('rp', %s, 'app.events', 'succeeded', %s, %s, %s)",
                         (day.isoformat(), json.dumps(counts), day + timedelta(days=1), day + timedelta(days=1)))
    with events() as seen, held_until_deleted(db_url, "anomaly") as readings:
        with pytest.raises(pgstage.AnomalyBlocked) as raised:
            pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert raised.value.exit_code == 5
    assert raised.value.message == "volume anomaly: 2 records read, expected 515-1,545 on a Monday: nothing was merged"
    assert readings == [BEFORE]
    assert rows(sql) == BEFORE
    assert names(seen) == ["early delete", "early delete rolled back"]
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [("blocked",)]


def test_a_failing_validation_leaves_the_day(tmp_path: Path, db_url: str, sql: Any) -> None:
    """A validation that errors (here a check dividing by zero) fails the run: the early DELETE is undone."""
    spec = loaded(tmp_path, db_url)
    spec.write_text(spec.read_text() + '\n[checks]\nbroken = "amount / (amount - amount) = 1"\n')
    with events() as seen:
        with pytest.raises(pgstage.PgstageError) as raised:
            pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert raised.value.exit_code == 1
    assert "division by zero" in str(raised.value)
    assert rows(sql) == BEFORE
    assert names(seen) == ["early delete", "early delete rolled back"]
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [("failed",)]


def test_a_dry_run_never_deletes(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = loaded(tmp_path, db_url)
    with events() as seen:
        forecast = pgstage.run(spec, db=db_url, partition="2024-01-15", dry_run=True)
    assert (forecast.counts.inserted, forecast.counts.deleted) == (2, 3)
    assert names(seen) == []
    assert rows(sql) == BEFORE


def test_an_index_drop_keeps_the_delete_in_the_swap(tmp_path: Path, db_url: str, sql: Any) -> None:
    """`index_strategy = "rebuild"` drops indexes before the merge (DDL): no early DELETE may hold them up."""
    spec = loaded(tmp_path, db_url)
    spec.write_text(spec.read_text().replace("max_retries = 0", 'max_retries = 0\nindex_strategy = "rebuild"'))
    sql("CREATE INDEX events_amount ON app.events (amount)")
    with events() as seen:
        report = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert (report.counts.inserted, report.counts.deleted) == (2, 3)
    assert names(seen) == []
    assert rows(sql) == AFTER
    assert sql("SELECT indexname FROM pg_indexes WHERE indexname = 'events_amount'") == [("events_amount",)]


def test_a_lost_early_session_gives_the_delete_back_to_the_swap(tmp_path: Path, db_url: str, sql: Any) -> None:
    """The early session killed while it waits (as idle_in_transaction_session_timeout would): the swap
    deletes by itself, the counts and the day exactly as ever."""
    spec = loaded(tmp_path, db_url)

    def kill(event: str, fields: dict[str, Any]) -> None:
        if event == "early delete":   # on the early session's thread, its transaction open and idle
            with psycopg.connect(db_url, autocommit=True) as other:
                pids = other.execute("SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'"
                                     " AND query LIKE 'DELETE FROM \"app\".\"events\"%%'").fetchall()
                for (pid,) in pids:
                    other.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))

    stop = logs.listen(kill)
    try:
        with events() as seen:
            report = pgstage.run(spec, db=db_url, partition="2024-01-15")
    finally:
        stop()
    assert_identity(report)
    assert (report.counts.inserted, report.counts.deleted) == (2, 3)
    assert rows(sql) == AFTER
    assert names(seen) == ["early delete", "early delete given up"]
