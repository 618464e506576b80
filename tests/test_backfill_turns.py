"""Two days of one pipeline in flight (pgstage/backfill/turns.py): the next day validates while the day before merges.

The races are made certain with hooks on the units' turns: the first day holds at its own
turn (just before its merge) until the second day has staged, validated and reached its turn
(the overlap), or until the other job found nothing it may claim (no overlap). Whatever
happens in between, the target and the ledger must equal those of one-by-one runs, and run
ids must follow the days.
"""

from __future__ import annotations

import importlib
import textwrap
import threading
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage.backfill import queue, turns
from pgstage.db import connect
from pgstage.pipeline import ledger as pipeline_ledger
from tests.test_backfill import assert_sum, ledger, other_db
from tests.test_backfill_order import D1, D2, DAY1, DAY2, _items, _solo, _spy_idle, _wait

__all__ = ["other_db"]   # the fixture, shared with test_backfill

backfill_module = importlib.import_module("pgstage.backfill")
D3 = date.fromordinal(D2.toordinal() + 1)


def _hold_first_day(monkeypatch: pytest.MonkeyPatch, until: Callable[[], bool],
                    seen: Callable[[], None] = lambda: None) -> threading.Event:
    """Hold D1 at its turn (validated, not merged) until `until()`; returns the event D2 sets at its turn."""
    second_waits = threading.Event()
    real_wait = turns.UnitTurn.wait

    def wait(self: turns.UnitTurn) -> None:
        if self.day == D1:
            _wait(until, "the second day or the other job")
            seen()
        if self.day == D2:
            second_waits.set()
        real_wait(self)

    monkeypatch.setattr(turns.UnitTurn, "wait", wait)
    return second_waits


def _one_by_one(spec: Path, url: str) -> None:
    for day in (D1, D2):
        pgstage.run(spec, partition=day, db=url)


def _statuses(url: str) -> dict[str, list[str]]:
    """Each day's batch statuses in the ledger, and whether the target has rows yet."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT r.partition, b.status FROM pgstage.batches b JOIN pgstage.runs r USING (run_id)"
                            " ORDER BY r.partition, b.batch_no").fetchall()
    out: dict[str, list[str]] = {}
    for day, status in rows:
        out.setdefault(day, []).append(status)
    return out


def test_the_next_day_validates_while_the_day_before_merges_and_merges_after_it(
        tmp_path: Path, db_url: str, other_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _solo(tmp_path)
    at_d1_turn: list[dict[str, list[str]]] = []
    second_waits = _hold_first_day(monkeypatch, until=lambda: second_waits.is_set(),
                                   seen=lambda: at_d1_turn.append(_statuses(db_url)))
    report = pgstage.backfill([spec], start=D1, end=D2, jobs=2, db=db_url)
    assert_sum(report)
    assert report.units == {"pending": 0, "succeeded": 2, "skipped": 0, "failed": 0}
    # When day 1 was about to merge, day 2 had already staged and validated its batch.
    assert at_d1_turn == [{D1.isoformat(): ["validated"], D2.isoformat(): ["validated"]}]
    # Day 2 still merged after day 1: it wins where they share ids, as in one-by-one runs.
    assert _items(db_url) == {**DAY1, **DAY2}
    _one_by_one(spec, other_db)
    assert ledger(db_url) == ledger(other_db)
    with psycopg.connect(db_url) as conn:   # run ids follow the days
        assert conn.execute("SELECT partition FROM pgstage.runs ORDER BY run_id").fetchall() == [
            (D1.isoformat(),), (D2.isoformat(),)]
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'pgstage'::regnamespace"
                            " AND relname ~ '^_(stg|chk)_'").fetchone() == (0,)


def test_a_spec_whose_rules_read_other_tables_keeps_one_day_at_a_time(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _solo(tmp_path)
    spec.write_text(spec.read_text() + textwrap.dedent("""
        [checks]
        short = "length(val) < 10"
    """))
    idle = _spy_idle(monkeypatch)
    at_d1_turn: list[bool] = []
    second_waits = _hold_first_day(monkeypatch, until=idle.is_set, seen=lambda: at_d1_turn.append(second_waits.is_set()))
    report = pgstage.backfill([spec], start=D1, end=D2, jobs=2, db=db_url)
    assert report.units == {"pending": 0, "succeeded": 2, "skipped": 0, "failed": 0}
    # The other job found nothing it may claim while day 1 waited to merge: day 2 had not started.
    assert at_d1_turn == [False] and _statuses(db_url)[D2.isoformat()] == ["merged"]
    assert _items(db_url) == {**DAY1, **DAY2}


class _Killed(BaseException):
    """What kills a job's thread in the test: not an Exception, so no unit outcome swallows it."""


def test_when_the_first_days_job_dies_the_waiting_day_stops_unmerged_and_a_rerun_resumes_both(
        tmp_path: Path, db_url: str, other_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _solo(tmp_path)
    second_waits = threading.Event()
    real_wait = turns.UnitTurn.wait

    def wait(self: turns.UnitTurn) -> None:
        if self.day == D1:
            _wait(second_waits.is_set, "the second day")
            raise _Killed("the job running day 1 dies before its merge")
        if self.day == D2:
            second_waits.set()
        real_wait(self)

    monkeypatch.setattr(turns.UnitTurn, "wait", wait)
    with pytest.raises(_Killed):
        pgstage.backfill([spec], start=D1, end=D2, jobs=2, db=db_url)
    with connect(db_url) as conn:   # neither day merged (the target is created by the first merge)
        assert conn.execute("SELECT to_regclass('app.items')").fetchone() == (None,)
        assert conn.execute("SELECT partition, status FROM pgstage.runs ORDER BY run_id").fetchall() == [
            (D1.isoformat(), "failed"), (D2.isoformat(), "failed")]
        assert queue.statuses(conn, 1) == {"pending": 2, "succeeded": 0, "skipped": 0, "failed": 0}
    monkeypatch.setattr(turns.UnitTurn, "wait", real_wait)
    report = pgstage.backfill([spec], start=D1, end=D2, jobs=2, db=db_url)
    assert report.resumed and report.units == {"pending": 0, "succeeded": 2, "skipped": 0, "failed": 0}
    assert_sum(report)
    assert _items(db_url) == {**DAY1, **DAY2}
    _one_by_one(spec, other_db)
    one_by_one = ledger(other_db)   # the resumed runs kept their ids and ended succeeded
    assert ledger(db_url) == one_by_one


def test_a_second_day_is_claimable_only_while_this_process_runs_the_first(db_url: str) -> None:
    with connect(db_url) as conn:
        pipeline_ledger.ensure(conn)
        queue.ensure(conn)
        refs = (queue.SpecRef("/specs/a.toml", "a", None), queue.SpecRef("/specs/b.toml", "b", None))
        job, _ = queue.create_or_resume(conn, refs, D1, D3, False)
        bid = job.backfill_id
        holder = connect(db_url)
        try:
            with holder.transaction():
                assert queue.claim(holder, bid, [0, 1]) == queue.Unit(bid, 0, D1)   # a's first day, held
                with conn.transaction():
                    # Not said to run here: a's D2 waits; b's D1 comes first anyway.
                    assert queue.claim(conn, bid, [0, 1]) == queue.Unit(bid, 1, D1)
                    with connect(db_url) as third, third.transaction():
                        assert queue.claim(third, bid, [0, 1]) is None
                        # a's D1 runs in this process: its D2 may come, after it. Not a's D3, nor for a
                        # pipeline not allowed to overlap.
                        assert queue.claim(third, bid, [1], [(0, D1)]) is None
                        assert queue.claim(third, bid, [0, 1], [(0, D1), (1, D1)]) == queue.Unit(bid, 0, D2, D1)
                        with connect(db_url) as fourth, fourth.transaction():
                            assert queue.claim(fourth, bid, [0, 1], [(0, D1), (1, D1)]) == queue.Unit(bid, 1, D2, D1)
                            with connect(db_url) as fifth, fifth.transaction():
                                assert queue.claim(fifth, bid, [0, 1], [(0, D1), (1, D1), (0, D2)]) is None
        finally:
            holder.close()


def test_with_newest_first_the_second_day_is_the_next_older_one(db_url: str) -> None:
    with connect(db_url) as conn:
        pipeline_ledger.ensure(conn)
        queue.ensure(conn)
        job, _ = queue.create_or_resume(conn, (queue.SpecRef("/specs/a.toml", "a", None),), D1, D3, True)
        bid = job.backfill_id
        with connect(db_url) as holder, holder.transaction():
            assert queue.claim(holder, bid, [0]) == queue.Unit(bid, 0, D3)
            with conn.transaction():
                assert queue.claim(conn, bid, [0], [(0, D3)]) == queue.Unit(bid, 0, D2, D3)
