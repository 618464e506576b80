"""A backfill's secondary indexes: dropped once at its start, rebuilt once at its end (pgstage/backfill/held.py).

The data and the oracle are tests/test_backfill.py's (three specs, one target, upsert_if_newer on
globally unique versions). The target exists before the backfill, with two plain secondary
indexes (dropped and rebuilt) and an expression index (never dropped).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Callable

import psycopg
import pytest

import pgstage
from pgstage import indexes
from pgstage.backfill import Progress, held, queue
from pgstage.ops import logs
from pgstage.pipeline import ledger as pipeline_ledger
from pgstage.report import Counts
from pgstage.spec import load_spec
from tests.test_backfill import (START, SPEC, Rows, cli, ledger, make_data, oracle, other_db, specs,  # noqa: F401
                                 target, write)

Sql = Callable[..., list[tuple[Any, ...]]]
DAY0 = START - timedelta(days=1)
DAY0_ROWS = [(i, -i, "1.00") for i in range(1, 16)]   # versions below every backfill row's: they never win
DROPPED = ("orders_amount", "orders_v_src")
KEPT = "orders_lower_src"   # an expression: a run never drops it, nor does a backfill


def set_strategy(root: Path, strategy: str, names: tuple[str, ...] = ("alpha", "beta", "gamma")) -> None:
    for name in names:
        path = root / f"{name}.toml"
        path.write_text(path.read_text().replace("[load]\n", f'[load]\nindex_strategy = "{strategy}"\n'))


def delta_spec(root: Path) -> Path:
    """A fourth pipeline on the same target, with keys no other writes: its counts do not depend on order."""
    (root / "delta.toml").write_text(textwrap.dedent(SPEC.format(name="delta")))
    (root / "data" / "delta").mkdir(parents=True, exist_ok=True)
    write(root, "delta", START, [(1000 + i, 200_000 + i, "2.00") for i in range(15)])
    return root / "delta.toml"


def prepare(root: Path, url: str, *, empty: bool = False) -> None:
    """The target as a day before the backfill left it (or emptied), with its indexes."""
    write(root, "alpha", DAY0, DAY0_ROWS)
    pgstage.run(root / "alpha.toml", partition=DAY0, db=url)
    with psycopg.connect(url, autocommit=True) as conn:
        if empty:
            conn.execute("TRUNCATE app.orders")
        conn.execute("CREATE INDEX orders_amount ON app.orders (amount)")
        conn.execute("CREATE INDEX orders_v_src ON app.orders (v DESC, src)")
        conn.execute("CREATE INDEX orders_lower_src ON app.orders (lower(src))")


def index_defs(url: str) -> dict[str, tuple[str, bool]]:
    """The target's non-unique indexes: name -> (definition, valid)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index i"
                            " JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 'app.orders'::regclass"
                            " AND NOT i.indisunique").fetchall()
    return {name: (definition, valid) for name, definition, valid in rows}


def held_rows(url: str) -> list[tuple[str, int | None, int | None]]:
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(   # type: ignore[misc]
            "SELECT index_name, run_id, backfill_id FROM pgstage.index_rebuilds ORDER BY index_name")]


def test_dropped_once_rebuilt_at_the_end_and_a_plain_run_meanwhile_leaves_them(tmp_path: Path, db_url: str,
                                                                               other_db: str) -> None:  # noqa: F811
    data = make_data(tmp_path, days=5)
    set_strategy(tmp_path, "rebuild")
    delta = delta_spec(tmp_path)
    prepare(tmp_path, db_url)
    before = index_defs(db_url)
    assert set(before) == {*DROPPED, KEPT}
    seen: list[set[str]] = []
    plain: list[pgstage.RunReport] = []

    def during(progress: Progress) -> None:
        seen.append(set(index_defs(db_url)))
        if not plain:   # a plain run on the same target while the backfill is alive
            plain.append(pgstage.run(delta, partition=START, db=db_url))
            seen.append(set(index_defs(db_url)))

    # One job: units of different specs that meet the same keys would count them by the order they merged in.
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=4), db=db_url,
                              on_progress=during)
    assert report.units == {"pending": 0, "succeeded": 15, "skipped": 0, "failed": 0}
    assert report.indexes_dropped == DROPPED and report.indexes_rebuilt == DROPPED
    assert report.as_dict()["indexes"] == {"dropped": list(DROPPED), "rebuilt": list(DROPPED)}
    assert len(seen) == 16 and all(names == {KEPT} for names in seen)   # gone for the whole backfill
    assert plain[0].status == "succeeded" and plain[0].counts.inserted == 15
    assert index_defs(db_url) == before   # back, valid, with the same definitions
    assert held_rows(db_url) == []
    # Each unit's counts and ledger rows are those of the same units run one by one (indexes kept).
    prepare(tmp_path, other_db)
    for i in range(5):
        for spec in specs(tmp_path):
            pgstage.run(spec, partition=START + timedelta(days=i), db=other_db)
    pgstage.run(delta, partition=START, db=other_db)
    data[("alpha", DAY0)] = DAY0_ROWS
    data[("delta", START)] = [(1000 + i, 200_000 + i, "2.00") for i in range(15)]
    assert target(db_url) == target(other_db) == oracle(data)
    assert ledger(db_url) == ledger(other_db)
    backfilled = {k: v for k, v in ledger(other_db).items() if k[0] != "delta" and k[1] != DAY0.isoformat()}
    assert report.counts == sum((Counts(**c) for c, _ in backfilled.values()), Counts())


@pytest.mark.parametrize("then", ["rerun", "repair", "run"])
def test_a_killed_backfill_leaves_them_to_its_rerun_to_repair_or_to_the_next_run(tmp_path: Path, db_url: str,
                                                                                 then: str) -> None:
    data = make_data(tmp_path, days=3)
    set_strategy(tmp_path, "rebuild")
    delta = delta_spec(tmp_path)
    prepare(tmp_path, db_url)
    before = index_defs(db_url)
    last = START + timedelta(days=2)
    args = [*map(str, specs(tmp_path)), "--from", START.isoformat(), "--to", last.isoformat(), "--db", db_url]
    killed = cli(*args, env={"PGSTAGE_FAULT": "merge.commit:5"})
    assert killed.returncode == -signal.SIGKILL
    with psycopg.connect(db_url) as conn:
        backfill_id = conn.execute("SELECT max(backfill_id) FROM pgstage.backfills").fetchone()[0]  # type: ignore[index]
    assert held_rows(db_url) == [(name, None, backfill_id) for name in DROPPED]
    assert set(index_defs(db_url)) == {KEPT}
    if then == "rerun":
        again = cli(*args, "--json")
        assert again.returncode == 0, again.stderr
        document = json.loads(again.stdout)
        assert document["resumed"] is True and document["units"]["succeeded"] == 9
        assert document["indexes"] == {"dropped": [], "rebuilt": list(DROPPED)}   # still dropped: held again
        data[("alpha", DAY0)] = DAY0_ROWS
        assert target(db_url) == oracle(data)
    elif then == "repair":
        fixed = subprocess.run([sys.executable, "-m", "pgstage.cli", "repair", str(specs(tmp_path)[1]), "--db", db_url],
                               capture_output=True, text=True, timeout=120)
        assert fixed.returncode == 0, fixed.stderr
    else:   # a run outside the backfill, on the same target, after the backfill died
        assert pgstage.run(delta, partition=START, db=db_url).status == "succeeded"
    assert index_defs(db_url) == before
    assert held_rows(db_url) == []


def test_a_failed_unit_does_not_keep_them_from_coming_back(tmp_path: Path, db_url: str) -> None:
    data = make_data(tmp_path, days=3)
    set_strategy(tmp_path, "rebuild")
    prepare(tmp_path, db_url)
    before = index_defs(db_url)
    (tmp_path / "data" / "beta" / "orders_2024-03-02.csv").unlink()
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=2), db=db_url)
    assert report.units == {"pending": 0, "succeeded": 8, "skipped": 0, "failed": 1}
    assert report.indexes_dropped == DROPPED and report.indexes_rebuilt == DROPPED
    assert index_defs(db_url) == before and held_rows(db_url) == []
    loaded = {k: v for k, v in data.items() if k != ("beta", date(2024, 3, 2))}
    loaded[("alpha", DAY0)] = DAY0_ROWS
    assert target(db_url) == oracle(loaded)


@pytest.mark.parametrize(("strategy", "empty", "dropped"), [
    ("auto", True, DROPPED),    # an empty target always qualifies
    ("auto", False, ()),        # 135 records do not dwarf a target of 15 rows (auto wants 50,000 at least)
    ("keep", True, ()),
])
def test_index_strategy_decides_for_the_whole_backfill(tmp_path: Path, db_url: str, strategy: str, empty: bool,
                                                        dropped: tuple[str, ...]) -> None:
    data = make_data(tmp_path, days=3)
    set_strategy(tmp_path, strategy)
    prepare(tmp_path, db_url, empty=empty)
    before = index_defs(db_url)
    seen: list[set[str]] = []
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=2), db=db_url,
                              on_progress=lambda _: seen.append(set(index_defs(db_url))))
    assert report.indexes_dropped == dropped and report.indexes_rebuilt == dropped
    assert all(names == set(before) - set(dropped) for names in seen) and len(seen) == 9
    assert index_defs(db_url) == before
    if not empty:
        data[("alpha", DAY0)] = DAY0_ROWS
    assert target(db_url) == oracle(data)


def test_joined_processes_rebuild_them_once(tmp_path: Path, db_url: str) -> None:
    data = make_data(tmp_path, days=6)
    set_strategy(tmp_path, "rebuild")
    prepare(tmp_path, db_url)
    before = index_defs(db_url)
    args = [*map(str, specs(tmp_path)), "--from", START.isoformat(), "--to", (START + timedelta(days=5)).isoformat()]
    first = subprocess.Popen([sys.executable, "-m", "pgstage.cli", "backfill", *args, "--db", db_url, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for _ in range(600):   # the first process has created the backfill and dropped the indexes
            # (their rows commit with each DROP; pg_get_indexdef beside a DROP could fail to find the index)
            if len(conn.execute("SELECT 1 FROM pgstage.index_rebuilds WHERE backfill_id IS NOT NULL").fetchall()) == 2:
                break
            time.sleep(0.05)
        backfill_id = conn.execute("SELECT max(backfill_id) FROM pgstage.backfills").fetchone()[0]  # type: ignore[index]
    second = subprocess.run([sys.executable, "-m", "pgstage.cli", "backfill", "--join", str(backfill_id),
                             "--db", db_url, "--json"], capture_output=True, text=True, timeout=600)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, err + second.stderr
    documents = [json.loads(out), json.loads(second.stdout)]
    assert [d["indexes"]["dropped"] for d in documents] == [list(DROPPED), []]
    rebuilt = [d["indexes"]["rebuilt"] for d in documents]
    assert sorted(rebuilt) == [[], list(DROPPED)]   # whoever ended first, once
    assert index_defs(db_url) == before and held_rows(db_url) == []
    data[("alpha", DAY0)] = DAY0_ROWS
    assert target(db_url) == oracle(data)


def test_a_target_the_first_unit_creates_has_its_declared_indexes_dropped_after_it(tmp_path: Path, db_url: str,
                                                                                    other_db: str) -> None:  # noqa: F811
    """A fresh database: the first unit creates the target with its `[indexes]`; the next days go without them."""
    data = make_data(tmp_path, days=4)
    set_strategy(tmp_path, "rebuild")
    for name in ("alpha", "beta", "gamma"):
        path = tmp_path / f"{name}.toml"
        path.write_text(path.read_text() + '\n[indexes]\norders_by_amount = { columns = ["amount", "v desc"] }\n')
    seen: list[set[str]] = []
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=3), db=db_url,
                              on_progress=lambda _: seen.append(set(index_defs(db_url))))
    assert report.units["succeeded"] == 12
    assert report.indexes_dropped == ("orders_by_amount",) and report.indexes_rebuilt == ("orders_by_amount",)
    assert seen == [set()] * 12   # dropped right after the unit that created it (before its progress is told)
    for i in range(4):
        for spec in specs(tmp_path):
            pgstage.run(spec, partition=START + timedelta(days=i), db=other_db)
    assert index_defs(db_url) == index_defs(other_db) == {"orders_by_amount": (
        "CREATE INDEX orders_by_amount ON app.orders USING btree (amount, v DESC)", True)}
    assert target(db_url) == target(other_db) == oracle(data)
    assert ledger(db_url) == ledger(other_db)
    assert held_rows(db_url) == []


def test_expected_rows_from_the_files_sizes(tmp_path: Path) -> None:
    make_data(tmp_path, days=4)
    spec = load_spec(tmp_path / "alpha.toml")
    days = [START + timedelta(days=i) for i in range(4)]
    (tmp_path / "data" / "alpha" / "orders_2024-03-04.csv").unlink()
    sizes = [(tmp_path / "data" / "alpha" / f"orders_{d}.csv").stat().st_size for d in days[:3]]
    first = (tmp_path / "data" / "alpha" / "orders_2024-03-01.csv").read_bytes()
    header = len(b"id,v,amount\n")
    assert held.expected_rows(spec, days, None) == sum(s - header for s in sizes) * 15 // (len(first) - header)
    assert 3 * 15 - 3 <= held.expected_rows(spec, days, None) <= 3 * 15 + 3   # 15 records a day, give or take
    assert held.expected_rows(spec, [days[3]], None) == 0   # no file
    write(tmp_path, "alpha", days[3], [])
    assert held.expected_rows(spec, [days[3]], None) == 0   # a header alone


def test_a_live_backfills_indexes_are_rebuilt_by_it_alone(tmp_path: Path, db_url: str, sql: Sql) -> None:
    """The lock test itself: held while any session holds the backfill's lock shared, free once none does."""
    make_data(tmp_path, days=1)
    prepare(tmp_path, db_url)
    spec = load_spec(tmp_path / "alpha.toml")
    before = index_defs(db_url)
    with psycopg.connect(db_url, autocommit=True) as alive, psycopg.connect(db_url, autocommit=True) as run:
        held.hold(alive, 7)
        assert indexes.drop_for_load(run, spec, None, backfill_id=7) == list(DROPPED)
        assert indexes.rebuild(run, spec) == [] and set(index_defs(db_url)) == {KEPT}   # a unit, a run, repair
        assert indexes.rebuild(run, spec, backfill_id=8) == []   # another backfill's end
        held.release(alive, 7)
        held.hold(run, 7)   # the same backfill's other process, ending: rebuilds though a lock is held
        held.hold(alive, 7)
        assert indexes.rebuild(run, spec, backfill_id=7) == list(DROPPED)
        assert index_defs(db_url) == before
        assert indexes.drop_for_load(run, spec, None, backfill_id=7) == list(DROPPED)
        held.release(alive, 7)
        held.release(run, 7)
        assert indexes.rebuild(run, spec) == list(DROPPED)   # nobody holds it: the backfill is dead
    assert index_defs(db_url) == before and sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


def test_the_previous_ledger_is_upgraded_and_its_rows_still_rebuild(tmp_path: Path, db_url: str, sql: Sql) -> None:
    """index_rebuilds before this version: no backfill_id, run_id NOT NULL, stamped by that version."""
    make_data(tmp_path, days=1)
    prepare(tmp_path, db_url)
    spec = load_spec(tmp_path / "alpha.toml")
    sql("ALTER TABLE pgstage.index_rebuilds DROP COLUMN backfill_id, ALTER COLUMN run_id SET NOT NULL")
    previous = [u for u in pipeline_ledger._UPGRADES if "index_rebuilds" not in u[1]]
    assert len(previous) == len(pipeline_ledger._UPGRADES) - 2
    from pgstage.pipeline._functions import INSTALL
    sql(f"COMMENT ON SCHEMA pgstage IS '{pipeline_ledger.stamp_of(pipeline_ledger._DDL, previous, INSTALL)}'")
    sql("INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id)"
        " VALUES ('app.orders', 'orders_old', 'CREATE INDEX orders_old ON app.orders USING btree (v)', 1)")
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert not pipeline_ledger.current(conn)
        pipeline_ledger.ensure(conn)
        assert pipeline_ledger.current(conn)
        assert sql("SELECT attname, attnotnull FROM pg_attribute WHERE attrelid = 'pgstage.index_rebuilds'::regclass"
                   " AND attname IN ('run_id', 'backfill_id') ORDER BY 1") == [("backfill_id", False), ("run_id", False)]
        assert sql("SELECT index_name, run_id, backfill_id FROM pgstage.index_rebuilds") == [("orders_old", 1, None)]
        assert indexes.rebuild(conn, spec) == ["orders_old"]
    assert index_defs(db_url)["orders_old"] == ("CREATE INDEX orders_old ON app.orders USING btree (v)", True)


def test_the_pending_query_matches_its_golden_file(db_url: str) -> None:
    """The one new builder, rendered; the tests above execute it."""
    with psycopg.connect(db_url) as conn:
        text = indexes.build_pending().as_string(conn) + "\n"
    path = Path(__file__).parent / "golden" / "backfill" / "index_pending.sql"
    if os.environ.get("PGSTAGE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


def test_an_index_dropped_by_another_session_meanwhile_is_left_to_it(tmp_path: Path, db_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A backfill's deferred drop and a unit's own drop may list the same index at once: the second leaves it."""
    make_data(tmp_path, days=1)
    prepare(tmp_path, db_url)
    spec = load_spec(tmp_path / "alpha.toml")
    with psycopg.connect(db_url, autocommit=True) as first, psycopg.connect(db_url, autocommit=True) as second:
        listed = indexes.secondary_indexes(second, spec)   # both list the indexes before either drops one
        monkeypatch.setattr(indexes, "secondary_indexes", lambda conn, spec: listed)
        done: list[list[str]] = []
        racing = threading.Thread(target=lambda: done.append(indexes.drop_for_load(second, spec, 99)))
        with first.transaction():
            assert indexes.drop_for_load(first, spec, None, backfill_id=3) == list(DROPPED)
            racing.start()
            time.sleep(0.5)   # its INSERT waits for this transaction's rows
        racing.join(timeout=30)
    assert done == [[]]
    assert held_rows(db_url) == [(name, None, 3) for name in DROPPED]


def test_a_target_locked_past_lock_timeout_keeps_its_indexes_and_the_backfill_goes_on(tmp_path: Path,
                                                                                       db_url: str) -> None:
    data = make_data(tmp_path, days=2)
    # auto: the backfill drops for an empty target, its 15-record days would not (a run under `rebuild`
    # would wait for the same lock, and fail)
    set_strategy(tmp_path, 'auto"\nlock_timeout = "300ms')
    prepare(tmp_path, db_url, empty=True)
    before = index_defs(db_url)
    events: list[tuple[str, dict[str, Any]]] = []
    stop = logs.listen(lambda event, fields: events.append((event, fields)))
    try:
        with psycopg.connect(db_url) as reader:   # a long query: ACCESS SHARE, which a merge's INSERT does not mind
            reader.execute("SELECT count(*) FROM app.orders")
            report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=1), db=db_url)
            reader.rollback()
    finally:
        stop()
    assert report.units["succeeded"] == 6 and report.indexes_dropped == () and report.indexes_rebuilt == ()
    kept = [fields for event, fields in events if event == "backfill indexes kept"]
    assert len(kept) == 1 and kept[0]["target"] == "app.orders" and "lock" in kept[0]["why"].lower()
    assert index_defs(db_url) == before and held_rows(db_url) == []
    assert target(db_url) == oracle(data)
