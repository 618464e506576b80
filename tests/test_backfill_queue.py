"""The backfill queue on its own: what a claim may take, what a lost session gives back; its SQL pinned in golden files.

Two pipelines a and b over three days. A claim may take only a pipeline's first pending day
(its last with newest_first), so a pipeline's days run one at a time and in order; the two
pipelines still run side by side.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgstage.backfill import queue
from pgstage.db import connect
from pgstage.pipeline import ledger

GOLDEN = Path(__file__).parent / "golden" / "backfill"
UPDATE = os.environ.get("PGSTAGE_UPDATE_GOLDEN") == "1"
SPECS = (queue.SpecRef("/specs/a.toml", "a", None), queue.SpecRef("/specs/b.toml", "b", "/data"))
D1, D2, D3 = date(2024, 5, 1), date(2024, 5, 2), date(2024, 5, 3)
A, B = 0, 1


@pytest.mark.parametrize("name, builder", [("units", queue.build_units), ("claim", queue.build_claim),
                                           ("counts", queue.build_counts)])
def test_rendered_sql_matches_its_golden_file(name: str, builder: Callable[[], sql.Composed], db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        text = builder().as_string(conn) + "\n"
    path = GOLDEN / f"{name}.sql"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert text == path.read_text()


def _queue(url: str, newest_first: bool = False) -> int:
    """A new backfill of a and b over D1..D3; the same call again resumes it."""
    with connect(url) as conn:
        ledger.ensure(conn)
        queue.ensure(conn)
        backfill, resumed = queue.create_or_resume(conn, SPECS, D1, D3, newest_first)
        assert not resumed
        again, resumed = queue.create_or_resume(conn, SPECS, D1, D3, newest_first)
        assert resumed and again.backfill_id == backfill.backfill_id
        return backfill.backfill_id


@pytest.fixture
def sessions(db_url: str) -> Iterator[list[psycopg.Connection[Any]]]:
    """Three sessions of the database, closed at the end (a test may close one first, as a kill would)."""
    conns = [connect(db_url) for _ in range(3)]
    yield conns
    for conn in conns:
        conn.close()


def _claim(conn: psycopg.Connection[Any], backfill_id: int) -> queue.Unit | None:
    """A claim in a transaction of its own, released at once."""
    with conn.transaction():
        return queue.claim(conn, backfill_id)


def test_every_unit_is_queued_once(db_url: str) -> None:
    backfill_id = _queue(db_url)
    with connect(db_url) as conn:
        rows = conn.execute("SELECT spec_no, day, pipeline, status FROM pgstage.backfill_units"
                            " WHERE backfill_id = %s ORDER BY day, spec_no", (backfill_id,)).fetchall()
        assert rows == [(n, d, p, "pending") for d in (D1, D2, D3) for n, p in ((A, "a"), (B, "b"))]
        assert queue.statuses(conn, backfill_id) == {"pending": 6, "succeeded": 0, "skipped": 0, "failed": 0}


def test_a_pipelines_days_are_claimed_in_order_one_at_a_time(db_url: str,
                                                             sessions: list[psycopg.Connection[Any]]) -> None:
    backfill_id = _queue(db_url)
    one, two, three = sessions
    with one.transaction():
        first = queue.claim(one, backfill_id)
        assert first == queue.Unit(backfill_id, A, D1)
        with two.transaction():
            # a's D1 is held, so a's D2 is not eligible (it would overtake D1); b's D1 is free.
            assert queue.claim(two, backfill_id) == queue.Unit(backfill_id, B, D1)
            # Both pipelines' next days are held: nothing is free, though four units are pending.
            assert _claim(three, backfill_id) is None
            assert queue.statuses(three, backfill_id)["pending"] == 6
        # two's transaction ended without an outcome: b's D1 is free again, and still pending.
        assert _claim(three, backfill_id) == queue.Unit(backfill_id, B, D1)
        queue.finish(one, first, queue.Outcome("succeeded", None, 0, None, 0.1, 10))
    # a's D1 is done: its D2 is next, and b's D1 still comes first (older day).
    with two.transaction():
        assert queue.claim(two, backfill_id) == queue.Unit(backfill_id, B, D1)
        assert _claim(three, backfill_id) == queue.Unit(backfill_id, A, D2)
    assert queue.statuses(one, backfill_id) == {"pending": 5, "succeeded": 1, "skipped": 0, "failed": 0}


def test_the_claim_of_a_killed_session_comes_back(db_url: str, sessions: list[psycopg.Connection[Any]]) -> None:
    backfill_id = _queue(db_url)
    one, _, three = sessions
    killed = psycopg.connect(db_url)   # not autocommit: its claim lives in the transaction the close ends
    try:
        assert queue.claim(killed, backfill_id) == queue.Unit(backfill_id, A, D1)
        with one.transaction():
            assert queue.claim(one, backfill_id) == queue.Unit(backfill_id, B, D1)
            assert _claim(three, backfill_id) is None
            killed.close()   # as kill -9 would: the server ends the backend and rolls the claim back
            deadline = time.monotonic() + 10
            taken = _claim(three, backfill_id)
            while taken is None and time.monotonic() < deadline:   # the backend ends just after the close
                time.sleep(0.05)
                taken = _claim(three, backfill_id)
            assert taken == queue.Unit(backfill_id, A, D1)
    finally:
        killed.close()
    assert queue.statuses(one, backfill_id)["pending"] == 6


def test_newest_first_and_a_failed_day(db_url: str) -> None:
    backfill_id = _queue(db_url, newest_first=True)
    with connect(db_url) as conn:
        with conn.transaction():
            unit = queue.claim(conn, backfill_id)
            assert unit == queue.Unit(backfill_id, A, D3)
            queue.finish(conn, unit, queue.Outcome("failed", None, 1, "no file", 0.2))
        assert queue.failures(conn, backfill_id) == [
            {"pipeline": "a", "partition": "2024-05-03", "run_id": None, "exit_code": 1, "message": "no file"}]
        # A failed day is no longer pending: its pipeline goes on with the next (older) day.
        with conn.transaction():
            assert queue.claim(conn, backfill_id) == queue.Unit(backfill_id, B, D3)
            with connect(db_url) as other, other.transaction():
                assert queue.claim(other, backfill_id) == queue.Unit(backfill_id, A, D2)
        assert queue.retry_failed(conn, backfill_id) == 1
        assert queue.statuses(conn, backfill_id) == {"pending": 6, "succeeded": 0, "skipped": 0, "failed": 0}
        assert _claim(conn, backfill_id) == queue.Unit(backfill_id, A, D3)


def test_the_claim_looks_only_at_its_own_backfill(db_url: str) -> None:
    first = _queue(db_url)
    with connect(db_url) as conn:
        other, _ = queue.create_or_resume(conn, SPECS[:1], D2, D3, newest_first=True)
        with conn.transaction():
            assert queue.claim(conn, other.backfill_id) == queue.Unit(other.backfill_id, A, D3)
            with connect(db_url) as second, second.transaction():
                assert queue.claim(second, first) == queue.Unit(first, A, D1)
