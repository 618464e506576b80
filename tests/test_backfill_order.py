"""Backfill jobs and the order of a pipeline's days; idle jobs that wait for held units.

A pipeline's days must load in order, one at a time, whatever `--jobs` says: under plain
`upsert` the last load wins, so an older day finishing after a newer one would leave the
older rows in the target. And a job that finds every unit held stays until they are done,
so it takes over the unit of a process that dies holding it.

The races are made certain, not left to timing: a hook on the unit's run holds the first
day until the other job has either run the second day (the bug) or found no unit it may
claim (the rule).
"""

from __future__ import annotations

import importlib
import textwrap
import threading
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage.backfill import queue
from pgstage.backfill.forecast import forecast
from pgstage.pipeline import ledger as pipeline_ledger
from pgstage.report import Counts
from tests.test_backfill import START, assert_sum, ledger, make_data, oracle, other_db, specs, target

__all__ = ["other_db"]   # the fixture, shared with test_backfill

backfill_module = importlib.import_module("pgstage.backfill")   # `pgstage.backfill` is the function
D1, D2 = START, START + timedelta(days=1)

SOLO = """
[pipeline]
name = "solo"
target = "app.items"
key = ["id"]
strategy = "upsert"

[source]
path = "data/items_{date}.csv"

[columns]
id = { from = "id", type = "integer", required = true }
val = { from = "val", type = "text", required = true }
"""

# Day 1 inserts ids 1..20; day 2 changes ids 1..10 and adds 21..25.
DAY1 = {i: f"d1-{i}" for i in range(1, 21)}
DAY2 = {**{i: f"d2-{i}" for i in range(1, 11)}, **{i: f"d2-{i}" for i in range(21, 26)}}


def _solo(root: Path) -> Path:
    (root / "solo.toml").write_text(textwrap.dedent(SOLO))
    (root / "data").mkdir()
    for day, rows in ((D1, DAY1), (D2, DAY2)):
        (root / "data" / f"items_{day.isoformat()}.csv").write_text(
            "id,val\n" + "".join(f"{i},{v}\n" for i, v in rows.items()))
    return root / "solo.toml"


def _items(url: str) -> dict[int, str]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT id, val FROM app.items").fetchall())  # type: ignore[arg-type]


def _spy_idle(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a job's claim finds no unit it may take."""
    idle = threading.Event()
    real = queue.claim

    def claim(conn: psycopg.Connection[Any], backfill_id: int, *rest: Any) -> queue.Unit | None:
        unit = real(conn, backfill_id, *rest)
        if unit is None:
            idle.set()
        return unit

    monkeypatch.setattr(queue, "claim", claim)
    return idle


def _wait(until: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_pipelines_days_load_in_order_whatever_the_jobs(tmp_path: Path, db_url: str, other_db: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _solo(tmp_path)
    idle = _spy_idle(monkeypatch)
    second_done = threading.Event()
    real_run = backfill_module.run

    def run(spec: Any, *, partition: date, **options: Any) -> pgstage.RunReport:
        if partition == D1:   # the first day waits until the other job either ran day 2 or found it not claimable
            _wait(lambda: second_done.is_set() or idle.is_set(), "the other job")
        report = real_run(spec, partition=partition, **options)
        if partition == D2:
            second_done.set()
        return report

    monkeypatch.setattr(backfill_module, "run", run)
    report = pgstage.backfill([spec], start=D1, end=D2, jobs=2, db=db_url)
    assert_sum(report)
    assert report.units == {"pending": 0, "succeeded": 2, "skipped": 0, "failed": 0}
    assert idle.is_set() and second_done.is_set()
    # Day 2 wins where the days share ids, exactly as one-by-one runs give.
    assert _items(db_url) == {**DAY1, **DAY2}
    for day in (D1, D2):
        pgstage.run(spec, partition=day, db=other_db)
    assert _items(other_db) == {**DAY1, **DAY2}
    one_by_one = ledger(other_db)
    assert ledger(db_url) == one_by_one
    assert report.counts == sum((Counts(**c) for c, _ in one_by_one.values()), Counts())
    assert (report.counts.read, report.counts.inserted, report.counts.updated) == (35, 25, 10)
    with psycopg.connect(db_url) as conn:   # and in the ledger, day 1's run came first
        assert conn.execute("SELECT partition FROM pgstage.runs ORDER BY run_id").fetchall() == [
            (D1.isoformat(),), (D2.isoformat(),)]


def test_an_idle_join_takes_over_the_unit_of_a_killed_process(tmp_path: Path, db_url: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_data(tmp_path, days=1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        pipeline_ledger.ensure(conn)
        queue.ensure(conn)
        refs = tuple(queue.SpecRef(str(p), p.stem, None) for p in specs(tmp_path))
        job, _ = queue.create_or_resume(conn, refs, START, START, False)
    # Another process holds alpha's unit (its claim lives in its open transaction).
    doomed = psycopg.connect(db_url)
    try:
        assert queue.claim(doomed, job.backfill_id) == queue.Unit(job.backfill_id, 0, START)
        idle = _spy_idle(monkeypatch)
        result: list[pgstage.BackfillReport | BaseException] = []

        def join() -> None:
            try:
                result.append(pgstage.backfill(join=job.backfill_id, db=db_url))
            except BaseException as exc:  # handed to the test's thread
                result.append(exc)

        joiner = threading.Thread(target=join)
        joiner.start()
        # The joiner runs beta and gamma, then finds nothing it may claim: alpha's unit is held.
        _wait(lambda: idle.is_set() or bool(result), "the joiner to find the queue empty")
        assert not result, result
        doomed.close()   # as kill -9 would: the server rolls the claim back, the unit is pending again
        joiner.join(timeout=300)
        assert not joiner.is_alive()
    finally:
        doomed.close()
    report = result[0]
    assert isinstance(report, pgstage.BackfillReport), report
    assert report.units == {"pending": 0, "succeeded": 3, "skipped": 0, "failed": 0}
    assert_sum(report)
    assert target(db_url) == oracle(data)
    assert {k[0] for k in ledger(db_url)} == {"alpha", "beta", "gamma"}   # each unit ran exactly once


def test_the_forecast_asks_for_no_more_jobs_than_pipelines() -> None:
    now = datetime(2026, 1, 10, 2, 0, tzinfo=timezone.utc)
    # 100 units in 600 s on 2 jobs, 2,090 left: 12,540 s; a deadline 7,200 s away needs ceil(2 * 12,540 / 7,200) = 4.
    three = forecast(measured=100, elapsed_s=600, remaining=2090, jobs=2, now=now, deadline=now.replace(hour=4),
                     most_jobs=3)
    assert three.late and three.jobs_needed == 4
    assert three.warning(2) == (
        "late: at the measured rate the backfill ends at 2026-01-10 05:29, after the deadline 2026-01-10 04:00"
        " (running with --jobs 2); more --jobs cannot meet it: each pipeline merges its days one at a time,"
        " so at most 3 jobs are busy")
    four = forecast(measured=100, elapsed_s=600, remaining=2090, jobs=2, now=now, deadline=now.replace(hour=4),
                    most_jobs=4)
    assert (four.warning(2) or "").endswith("; --jobs 4 would meet it if the database keeps up")
