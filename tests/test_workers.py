"""Batches on several sessions (pgstage/workers.py): the same result as one session, commits in
batch order, and a failure that stops the run where it failed."""

from __future__ import annotations

import random
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage import faults
from pgstage.pipeline import stage, validate
from pgstage.pipeline.extract.csv import Window
from pgstage.workers import Aborted, InOrder
from tests.conftest import Loader, assert_identity
from tests import specs
from tests.test_property import Row, oracle, write_csv

SPEC = specs.template(name="w", target="app.items", path="data.csv", columns=specs.ITEMS,
                      strategy="upsert_if_newer", pipeline='version = "v"',
                      load="batch_rows = 25\nmax_reject_ratio = 0.5\nworkers = {workers}")


def _rows(seed: int, n: int) -> list[Row]:
    rng = random.Random(seed)
    versions = rng.sample(range(1, 100_000), n)
    return [Row(str(rng.randint(1, 120)), str(versions[i]), "-1" if rng.random() < 0.05 else f"{rng.randint(0, 999)}.50",
                f"n{i}") for i in range(n)]


@pytest.mark.parametrize("workers", [1, 3])
def test_any_number_of_workers_gives_the_oracle_result(loader: Loader, sql: Any, workers: int) -> None:
    base, delta = _rows(1, 150), _rows(2, 220)     # keys repeat within and across batches
    loader.spec(SPEC.format(workers=workers))
    expected, counts = oracle("upsert_if_newer", [base, delta])
    for records, want in zip((base, delta), counts):
        write_csv(loader.root / "data.csv", records)
        report = loader.run(force=True)
        assert {k: getattr(report.counts, k) for k in want} == want
    got = {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")}
    assert got == expected


def test_merges_commit_in_batch_order_and_a_failure_stops_the_rest(loader: Loader, sql: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    loader.spec(SPEC.format(workers=3))
    records = _rows(3, 200)
    write_csv(loader.root / "data.csv", records)
    turns: list[str] = []

    def hit(point: str) -> None:
        if point == "merge.commit":   # reached in commit order, just before each commit
            turns.append(threading.current_thread().name)
            if len(turns) == 4:
                raise RuntimeError("injected failure in the fourth batch's commit")

    monkeypatch.setattr(faults, "hit", hit)
    with pytest.raises(RuntimeError, match="fourth batch"):
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    merged = sql("SELECT batch_no FROM pgstage.batches WHERE status = 'merged' ORDER BY batch_no")
    assert merged == [(0,), (1,), (2,)]       # a prefix: later batches rolled back with the failed one
    assert len({name for name in turns}) > 1  # the commits did come from several sessions

    monkeypatch.setattr(faults, "hit", lambda point: None)
    report = loader.run()
    assert_identity(report)
    expected, [want] = oracle("upsert_if_newer", [records])
    assert {k: getattr(report.counts, k) for k in want} == want
    assert {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")} == expected


def test_turns_are_taken_in_order_whatever_order_the_batches_finish() -> None:
    order = InOrder()
    passed: list[int] = []
    lock = threading.Lock()

    def batch(i: int) -> None:
        time.sleep(random.random() / 50)
        order.wait(i)
        with lock:
            passed.append(i)
        order.committed(i)

    threads = [threading.Thread(target=batch, args=(i,)) for i in random.sample(range(12), 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert passed == list(range(12))

    stopped = InOrder()
    stopped.failed()
    with pytest.raises(Aborted):
        stopped.wait(1)


def test_one_file_is_spread_over_the_workers_when_large_enough() -> None:
    window = Window(0, 4_000_000, b"")
    assert stage.split_size(1_000_000, 2, 107_000_000, window, 40_000) == 588_501   # 1.07M / 2, and 10% more
    assert stage.split_size(1_000_000, 2, 16_000_000, window, 40_000) == 88_001
    assert stage.split_size(1_000_000, 2, 6_000_000, window, 40_000) == 1_000_000    # too small to split
    assert stage.split_size(1_000_000, 1, 107_000_000, window, 40_000) == 1_000_000  # one worker
    assert stage.split_size(1_000_000, 2, None, window, 40_000) == 1_000_000         # compressed: size unknown
    assert stage.split_size(300_000, 2, 107_000_000, window, 40_000) == 300_000      # batch_rows still caps


def test_workers_is_a_load_setting_with_bounds(loader: Loader) -> None:
    loader.spec(textwrap.dedent(SPEC.format(workers=0)))
    with pytest.raises(pgstage.SpecError, match="load.workers"):
        pgstage.load_spec(loader.root / "spec.toml")


@pytest.mark.parametrize(("server", "while_staging"), [(2, 1), (4, 2), (1, 1), (0, 0)])
def test_a_pass_started_while_staging_takes_half_the_parallel_workers(db_url: str, server: int,
                                                                       while_staging: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:   # as pgstage's sessions are
        conn.execute(f"SET max_parallel_workers_per_gather = {server}")
        with conn.transaction():
            validate.fewer_workers_while_staging(conn)
            assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone() == (str(while_staging),)
        # Transaction-local: the next pass, after the staging, has the session's own setting again.
        assert conn.execute("SHOW max_parallel_workers_per_gather").fetchone() == (str(server),)
