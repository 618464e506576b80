"""A run's first batches merge, uncommitted, while its last one validates (pgstage/run/early_merge.py).

The rows and counts must be exactly those of merging after every validation, which a plain Python
oracle gives (the greatest version wins, then the later record). Nobody sees the early rows before
the run goes ahead; whatever stops it (the reject threshold, keys repeated across batches, a lost
session, kill -9) leaves the target as it was, the indexes back, and a re-run equal to the oracle.
"""

from __future__ import annotations

import json
import random
import signal
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage.ops import logs
from pgstage.pipeline import ledger
from tests import test_crash as crash
from tests.conftest import Loader, assert_identity
from tests.test_early_delete import events
from tests.test_first_load_insert import SPEC, Row, _csv, _oracle
from tests.test_property import oracle, write_csv

Seen = list[tuple[str, dict[str, Any]]]

TARGET = ("CREATE SCHEMA app; CREATE TABLE app.items (id bigint PRIMARY KEY, v integer, note text,"
          " _loaded_at timestamptz NOT NULL DEFAULT now(), _updated_at timestamptz NOT NULL DEFAULT now(),"
          " _run_id bigint, _row_hash bigint); CREATE INDEX items_note ON app.items (note)")
REBUILD = SPEC.replace("batch_rows = 4", 'batch_rows = 4\nindex_strategy = "rebuild"')


def early(seen: Seen) -> list[tuple[str, Any]]:
    """The early merges' events: each batch merged early, its commit ("batch merged", early), given up, rolled back."""
    return [(e, f.get("batch")) for e, f in seen
            if "early" in e or (e == "batch merged" and f.get("early"))]


@contextmanager
def held_after_early_merges(db_url: str, last: int) -> Iterator[list[Any]]:
    """Hold the run's last validation (batch `last`) until every earlier batch has merged early, then note
    what another session reads of the target: the early rows are not visible before the run goes ahead."""
    merged = threading.Event()
    readings: list[Any] = []

    def listener(event: str, fields: dict[str, Any]) -> None:
        if event == "batch merged early" and fields["batch"] == last - 1:
            merged.set()
        elif event == "batch validated" and fields["batch"] == last:
            assert merged.wait(60), "the early merges did not run"
            with psycopg.connect(db_url, autocommit=True) as other:
                readings.append(other.execute("SELECT count(*) FROM app.items").fetchone())

    stop = logs.listen(listener)
    try:
        yield readings
    finally:
        stop()


def ten_rows() -> list[Row]:
    return [(i, 1, f"n{i}") for i in range(1, 11)]   # three batches: 4 + 4 + 2 records


def test_the_first_batches_merge_while_the_last_validates(loader: Loader, sql: Any) -> None:
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2) as readings:
        report = loader.run()
    assert readings == [(0,)]   # merged, not committed: nobody saw them
    # into the empty target the key's index went too (tests/test_key_index.py): the last batch merges there as well
    assert early(seen) == [("batch merged early", 0), ("batch merged early", 1), ("batch merged early", 2),
                           ("batch merged", 0), ("batch merged", 1), ("batch merged", 2)]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.as_dict() == {"read": 10, "rejected": 0, "valid": 10, "duplicate": 0, "inserted": 10,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert sql("SELECT batch_no, status, counts->>'inserted' FROM pgstage.batches ORDER BY batch_no") == [
        (0, "merged", "4"), (1, "merged", "4"), (2, "merged", "2")]
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []


def test_an_upsert_into_a_loaded_target_merges_early_too(loader: Loader, sql: Any) -> None:
    sql(TARGET)
    loader.spec(SPEC)
    first = ten_rows()
    loader.write("items.csv", _csv(first))
    loader.run()
    # a new file: batch 0 updates keys 1-4 (newer and older versions), batches 1 and 2 add keys 11-16
    rows = [(1, 2, "u1"), (2, 0, "old"), (3, 2, "u3"), (4, 1, "n4")] + [(i, 1, f"m{i}") for i in range(11, 17)]
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2):
        report = loader.run()
    assert early(seen)[:2] == [("batch merged early", 0), ("batch merged early", 1)]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(first + rows)
    assert (report.counts.inserted, report.counts.updated, report.counts.unchanged, report.counts.stale) == (6, 2, 1, 1)


def test_the_reject_threshold_rolls_the_early_merges_back(loader: Loader, sql: Any) -> None:
    sql(TARGET)
    loader.spec(REBUILD.replace("batch_rows = 4", "batch_rows = 4\nmax_reject_ratio = 0.2"))
    loader.write("items.csv", _csv(ten_rows()[:7]) + "8,x,a\n9,y,b\n10,z,c\n")   # the last batch: 3 bad versions
    with events() as seen, held_after_early_merges(loader.db_url, last=2) as readings:
        with pytest.raises(pgstage.RejectLimitExceeded) as raised:
            loader.run()
    assert raised.value.exit_code == 3
    assert str(raised.value).startswith("3 of 10 records rejected (30.0%), above max_reject_ratio 0.2: nothing was merged")
    assert readings == [(0,)]
    assert early(seen) == [("batch merged early", 0), ("batch merged early", 1), ("early merge rolled back", None)]
    assert sql("SELECT count(*) FROM app.items") == [(0,)]
    assert sql("SELECT status FROM pgstage.runs") == [("rejected_threshold",)]
    assert sql("SELECT count(*) FROM pgstage.batches WHERE status = 'merged'") == [(0,)]
    # the index the load dropped before its first early merge is back, and the ledger owes none
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


def test_keys_repeated_across_batches_roll_the_early_merges_back(loader: Loader, sql: Any) -> None:
    """The plan sets cross-batch losers aside, which the early merges could not know: they are undone, and
    every batch merges after the plan, exactly as the oracle says."""
    sql(TARGET)
    loader.spec(SPEC)
    rows = [(1, 1, "a"), (2, 1, "b"), (3, 1, "c"), (4, 1, "d"),
            (5, 1, "e"), (6, 1, "f"), (7, 1, "g"), (8, 1, "h"),
            (1, 5, "newer"), (9, 1, "i")]
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2):
        report = loader.run()
    assert early(seen) == [("batch merged early", 0), ("batch merged early", 1), ("early merge rolled back", None)]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert (report.counts.inserted, report.counts.duplicate) == (9, 1)


def test_a_lost_early_session_hands_its_batches_back(loader: Loader, sql: Any) -> None:
    """The early session killed while its transaction waits (as idle_in_transaction_session_timeout would):
    its batches merge after the plan, and the run's rows and counts are exactly as ever."""
    sql(TARGET)
    loader.spec(SPEC)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2):
        stop = logs.listen(lambda event, fields: _terminate_idle_transactions(loader.db_url)
                           if event == "batch validated" and fields["batch"] == 2 else None)
        try:
            report = loader.run()
        finally:
            stop()
    assert [e for e, _ in early(seen)][:3] == ["batch merged early", "batch merged early", "early merge given up"]
    assert not any(e == "batch merged" and f.get("early") for e, f in seen)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.inserted == 10


def _terminate_idle_transactions(db_url: str) -> None:
    """The early session: the one left idle in a transaction while the run's last validation is held."""
    with psycopg.connect(db_url, autocommit=True) as other:
        for (pid,) in other.execute("SELECT pid FROM pg_stat_activity WHERE state = 'idle in transaction'"
                                    " AND pid <> pg_backend_pid()").fetchall():
            other.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))


@pytest.mark.parametrize("how", ["created by the run", "dry run", "one batch"])
def test_where_nothing_merges_early(loader: Loader, sql: Any, how: str) -> None:
    """A target the run must create or alter (DDL would wait on the early rows), a dry run, a lone batch."""
    if how != "created by the run":
        sql(TARGET)
    loader.spec(SPEC.replace("batch_rows = 4", "batch_rows = 40") if how == "one batch" else SPEC)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run(dry_run=how == "dry run")
    assert early(seen) == []
    assert report.counts.inserted == 10
    assert sql("SELECT count(*) FROM app.items") == [(0 if how == "dry run" else 10,)]


# inside the early transaction after its first and second batch; before its commit; after it (the commit's
# points are the crash suite's, passed once a batch)
POINTS = ["merge.early:1", "merge.early:2", "merge.commit:1", "merge.after:2"]


def test_killed_during_early_merges_then_rerun_equals_the_oracle(tmp_path: Path, db_url: str, sql: Any) -> None:
    """tests/test_crash.py's kill -9 and re-run, at the early merges: inside their open transaction, just before
    and just after its commit. Six batches of ten records whose keys do not repeat across batches, onto a loaded
    target with a secondary index the load drops."""
    killed = 0
    for seed, point in enumerate(POINTS):
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"p{seed}"
        (folder / "data").mkdir(parents=True)
        (folder / "spec.toml").write_text(textwrap.dedent(crash.SPEC.format(batch=crash.BATCH, retries=0)))
        rng = random.Random(seed)
        versions = rng.sample(range(1, 10_000), 100)
        base = crash.records(rng, range(1, 30), versions, 30)
        write_csv(folder / "data" / "a_base.csv", base)
        pgstage.run(folder / "spec.toml", db=db_url)
        sql("CREATE INDEX items_note ON app.items (note)")
        # batch b's keys are 100 + 10 b .. 109 + 10 b: no key in two batches, so the early merges commit
        delta = [r for b in range(6) for r in crash.records(rng, range(100 + 10 * b, 110 + 10 * b), versions, crash.BATCH)]
        write_csv(folder / "data" / "b_delta.csv", delta)
        code = crash.child_run(folder, db_url, point)
        assert code in (0, -signal.SIGKILL), code
        killed += code == -signal.SIGKILL
        report = pgstage.run(folder / "spec.toml", db=db_url)
        assert_identity(report)
        if code == 0:   # the early merges had not reached the point: the child loaded everything
            assert report.status == "skipped"
            continue
        table, counts = oracle("upsert_if_newer", [base, delta])
        assert {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")} == table
        for key in ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale"):
            assert getattr(report.counts, key) == counts[1][key], (point, key)
        assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
            ("items_note",), ("items_pkey",)]
        assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
        assert sql("SELECT count(*), count(DISTINCT (run_id, file, record)) FROM pgstage.rejects WHERE run_id = %s",
                   (report.run_id,)) == [(report.counts.rejected, report.counts.rejected)]
    assert killed >= 3


def _volume_history(db_url: str) -> None:
    """35 earlier runs of the pipeline of ~1,000 records each: a run of 10 is a volume anomaly."""
    from datetime import date, timedelta

    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.ensure(conn)
        for i in range(35):
            day, n = date(2026, 10, 1) + timedelta(days=i), 1000 + 10 * (i % 7)
            counts = {"read": n, "rejected": 0, "valid": n, "duplicate": 0, "inserted": n, "updated": 0,
                      "unchanged": 0, "stale": 0, "deleted": 0}
            conn.execute("INSERT INTO pgstage.runs (pipeline, target, status, counts, started_at, finished_at)"
                         " VALUES ('first', 'app.items', 'succeeded', %s, %s, %s)",
                         (json.dumps(counts), day, day + timedelta(hours=1)))


@pytest.mark.parametrize("how", ["anomaly", "failed check"])
def test_a_run_blocked_or_failed_after_the_early_merges_leaves_the_target(loader: Loader, sql: Any, how: str) -> None:
    sql(TARGET)
    extra = ('\n[anomaly]\naction = "block"\n' if how == "anomaly"
             else '\n[checks]\nbroken = "v / (id - 9) >= 0"\n')   # divides by zero at record 9, in the last batch
    loader.spec(REBUILD + extra)
    if how == "anomaly":
        _volume_history(loader.db_url)
    loader.write("items.csv", _csv(ten_rows()))
    with events() as seen, held_after_early_merges(loader.db_url, last=2) as readings:
        with pytest.raises(pgstage.PgstageError) as raised:
            loader.run()
    if how == "anomaly":
        assert raised.value.exit_code == 5
        assert raised.value.message.startswith("volume anomaly: 10 records read, expected ")
        assert raised.value.message.endswith(": nothing was merged")
        assert readings == [(0,)]
    else:
        assert raised.value.exit_code == 1
        assert "division by zero" in str(raised.value)
        assert readings == []   # the last validation failed: it was never held
    assert [e for e, _ in early(seen)][-1] == "early merge rolled back"
    assert ("batch merged early", 0) in early(seen)
    assert sql("SELECT count(*) FROM app.items") == [(0,)]
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id DESC LIMIT 1") == [
        ("blocked" if how == "anomaly" else "failed",)]
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


def test_the_index_drop_waits_for_no_validation(loader: Loader, sql: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A validation reads the target (the known-rows sample) and holds that lock until it commits: the drop of
    the indexes goes between two validations, so a short lock_timeout never fails the run on its own sessions."""
    from pgstage.pipeline import validate

    real = validate.check

    def slow_check(*a: Any, **k: Any) -> Any:
        checked = real(*a, **k)
        time.sleep(0.5)   # the validation's transaction stays open, its lock on the target held
        return checked

    monkeypatch.setattr(validate, "check", slow_check)
    sql(TARGET)
    loader.spec(REBUILD.replace("batch_rows = 4", 'batch_rows = 4\nlock_timeout = "100ms"'))
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    assert early(seen)[:2] == [("batch merged early", 0), ("batch merged early", 1)]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.inserted == 10
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
