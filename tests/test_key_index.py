"""The key's constraint dropped around a first load into an empty target (pgstage/key_index.py).

The run's rows and counts must be exactly those of a load that kept the key (a plain Python oracle:
the greatest version wins, then the later record), whatever happens: a key repeated inside a batch
or across batches, a refused run, a lost early session, a writer slipping in, kill -9 anywhere. And
the key must always be back afterwards as the same constraint (pg_constraint), with the ledger
owing nothing. While it is missing, readers read and other writers wait.
"""

from __future__ import annotations

import random
import signal
import textwrap
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql as psql

import pgstage
from pgstage import indexes, key_index
from pgstage.errors import UntrustedIndexDefinition
from pgstage.ops import logs
from pgstage.spec import parse_spec
from tests import test_crash as crash
from tests.conftest import Loader, assert_identity
from tests.test_early_delete import events
from tests.test_early_merge import (REBUILD, TARGET, _terminate_idle_transactions, _volume_history, early,
                                    held_after_early_merges, ten_rows)
from tests.test_first_load_insert import Row, _csv, _oracle, calls  # noqa: F401  (calls: a fixture)
from tests.test_property import oracle, write_csv

KEY = "SELECT conname, contype FROM pg_constraint WHERE conrelid = 'app.items'::regclass AND contype IN ('p', 'u')"
STORED = ('CREATE UNIQUE INDEX items_pkey ON app.items USING btree (id);'
          ' ALTER TABLE "app"."items" ADD CONSTRAINT "items_pkey" PRIMARY KEY USING INDEX "items_pkey"')


def steps(seen: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The key's own events, in order."""
    return [event for event, _ in seen if "key" in event]


def assert_key_back(sql: Any, kind: str = "p", name: str = "items_pkey") -> None:
    assert sql(KEY) == [(name, kind)]
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == sorted([("items_note",), (name,)])
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    # the run's own tables are gone (the merged batches' by the pool, beside the index rebuilds)
    assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []


def test_a_first_load_merges_every_batch_early_and_remakes_the_key(loader: Loader, sql: Any,
                                                                   calls: Counter[str]) -> None:
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2) as readings:
        report = loader.run()
    assert readings == [(0,)]   # a reader was not blocked, and saw nothing uncommitted
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert [f["reason"] for e, f in seen if e == "key index put back"] == ["the first load is merged"]
    assert early(seen) == [("batch merged early", 0), ("batch merged early", 1), ("batch merged early", 2),
                           ("batch merged", 0), ("batch merged", 1), ("batch merged", 2)]
    # the rows went in as they were: no count of the keys, the key's index judged them once, at the end
    assert calls == Counter({"insert dedup=False": 3})
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert_identity(report)
    assert (report.counts.inserted, report.counts.duplicate) == (10, 0)
    assert sql("SELECT batch_no, status, counts->>'inserted' FROM pgstage.batches ORDER BY batch_no") == [
        (0, "merged", "4"), (1, "merged", "4"), (2, "merged", "2")]
    assert_key_back(sql)


def test_no_known_rows_sample_reads_the_target_while_its_key_is_missing(loader: Loader, sql: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The known-rows sample probes the target by its key once per sampled record: without the key's index each
    probe would scan the early session's uncommitted rows. Once the key is dropped, validations skip it."""
    from pgstage.pipeline import known

    real, keyed = known.worth_it, []

    def worth_it(conn: psycopg.Connection[Any], *a: Any, **k: Any) -> bool:
        keyed.append(conn.execute("SELECT count(*) FROM pg_constraint WHERE conname = 'items_pkey'").fetchone())
        return real(conn, *a, **k)

    monkeypatch.setattr(known, "worth_it", worth_it)
    sql(TARGET)
    loader.spec(REBUILD.replace("batch_rows = 4", "batch_rows = 2"))   # five batches
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        loader.run()
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert set(keyed) <= {(1,)}   # sampled only while the key was there (before the drop), if at all
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert_key_back(sql)


@pytest.mark.parametrize("where", ["first batch", "last batch", "both"])
def test_a_key_repeated_inside_a_batch_merges_again_one_row_per_key(loader: Loader, sql: Any, where: str) -> None:
    """The key's index refuses the first load at the end: the inserts are undone, the key made on the empty table
    and every batch merged again the usual way, with its duplicates counted."""
    sql(TARGET)
    loader.spec(REBUILD)
    first = [(1, 1, "a"), (2, 1, "b"), (2, 3, "newer"), (3, 1, "c")] if where != "last batch" else [
        (1, 1, "a"), (2, 1, "b"), (3, 1, "c"), (4, 1, "d")]
    second = [(5, 1, "e"), (6, 1, "f"), (7, 1, "g"), (8, 1, "h")]
    last = [(9, 2, "i"), (9, 1, "older"), (10, 1, "j")] if where != "first batch" else [(9, 1, "i"), (10, 1, "j")]
    rows = first + second + last
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    assert steps(seen) == ["key index dropped", "first load repeats a key", "key index put back"]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert_identity(report)
    expected = _oracle(rows)
    assert (report.counts.read, report.counts.inserted, report.counts.duplicate) == (
        len(rows), len(expected), len(rows) - len(expected))
    merged = sql("SELECT sum((counts->>'inserted')::int), count(*) FROM pgstage.batches WHERE status = 'merged'")
    assert merged == [(len(expected), 3)]
    assert_key_back(sql)


def test_a_key_shared_by_two_batches_puts_the_key_back_before_the_merges(loader: Loader, sql: Any) -> None:
    sql(TARGET)
    loader.spec(REBUILD)
    rows = [(1, 1, "a"), (2, 1, "b"), (3, 1, "c"), (4, 1, "d"),
            (5, 1, "e"), (6, 1, "f"), (7, 1, "g"), (8, 1, "h"),
            (1, 5, "newer"), (9, 1, "i")]
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert [f["reason"] for e, f in seen if e == "key index put back"] == ["the early merges were given up"]
    assert ("early merge rolled back", None) in early(seen)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert (report.counts.inserted, report.counts.duplicate) == (9, 1)
    assert_key_back(sql)


@pytest.mark.parametrize("how", ["threshold", "anomaly", "failed check"])
def test_a_refused_or_failed_first_load_leaves_the_key(loader: Loader, sql: Any, how: str) -> None:
    sql(TARGET)
    extra = {"threshold": "", "anomaly": '\n[anomaly]\naction = "block"\n',
             "failed check": '\n[checks]\nbroken = "v / (id - 9) >= 0"\n'}[how]
    loader.spec(REBUILD.replace("batch_rows = 4", "batch_rows = 4\nmax_reject_ratio = 0.2") + extra)
    if how == "anomaly":
        _volume_history(loader.db_url)
    body = _csv(ten_rows()[:7]) + ("8,x,a\n9,y,b\n10,z,c\n" if how == "threshold" else "8,1,a\n9,1,b\n10,1,c\n")
    loader.write("items.csv", body)
    with events() as seen:
        with pytest.raises(pgstage.PgstageError) as raised:
            loader.run()
    assert raised.value.exit_code == {"threshold": 3, "anomaly": 5, "failed check": 1}[how]
    assert "key index dropped" in steps(seen)
    assert [e for e, _ in early(seen)][-1] == "early merge rolled back"
    assert sql("SELECT count(*) FROM app.items") == [(0,)]
    assert sql("SELECT count(*) FROM pgstage.batches WHERE status = 'merged'") == [(0,)]
    assert_key_back(sql)


def test_a_lost_early_session_gives_the_key_back_before_phase_2(loader: Loader, sql: Any) -> None:
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen, held_after_early_merges(loader.db_url, last=2):
        stop = logs.listen(lambda event, fields: _terminate_idle_transactions(loader.db_url)
                           if event == "batch validated" and fields["batch"] == 2 else None)
        try:
            report = loader.run()
        finally:
            stop()
    assert "early merge given up" in [e for e, _ in early(seen)]
    assert not any(e == "batch merged" and f.get("early") for e, f in seen)
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.inserted == 10
    assert_key_back(sql)


def test_batches_the_thread_did_not_reach_merge_at_the_commit(loader: Loader, sql: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The early thread merged nothing before the run went ahead (here: it merges nothing at all): the commit
    opens the session, takes the lock, merges every batch and makes the key again."""
    from pgstage.run import early_merge

    monkeypatch.setattr(early_merge.EarlyMerge, "_merge", lambda self, batches: None)
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert early(seen) == [("batch merged early", 0), ("batch merged early", 1), ("batch merged early", 2),
                           ("batch merged", 0), ("batch merged", 1), ("batch merged", 2)]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.inserted == 10
    assert_key_back(sql)


def test_another_writer_waits_while_the_key_is_missing(loader: Loader, sql: Any) -> None:
    """A second session's INSERT during the first load waits for the early session's lock (here, for its
    100 ms lock_timeout: it fails); a reader does not wait. The final table holds exactly the file's rows.
    (Tried as the first batch is merged early: the early session waits for this listener meanwhile.)"""
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    tried: list[str] = []

    def listener(event: str, fields: dict[str, Any]) -> None:
        if event == "batch merged early" and fields["batch"] == 0:   # on the early session, under its lock
            with psycopg.connect(loader.db_url, autocommit=True) as other:
                other.execute("SET lock_timeout = '100ms'")
                tried.append(str(other.execute("SELECT count(*) FROM app.items").fetchone()))
                try:
                    other.execute("INSERT INTO app.items (id, v, note) VALUES (1, 9, 'foreign')")
                    tried.append("inserted")
                except psycopg.errors.LockNotAvailable as exc:
                    tried.append(type(exc).__name__)

    stop = logs.listen(listener)
    try:
        with events() as seen:
            report = loader.run()
    finally:
        stop()
    assert tried == ["(0,)", "LockNotAvailable"]
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert report.counts.inserted == 10
    assert_key_back(sql)


def test_a_writer_before_the_lock_puts_the_key_back(loader: Loader, sql: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row written between the key's drop and the early session's lock: the target is no longer empty, so the
    key is made again at once and the load goes as it would have into a loaded target."""
    real = key_index.lock_writers

    def lock_after_a_foreign_insert(conn: psycopg.Connection[Any], spec: Any) -> None:
        with psycopg.connect(loader.db_url, autocommit=True) as other:
            other.execute("INSERT INTO app.items (id, v, note) VALUES (99, 1, 'foreign')")
        real(conn, spec)

    monkeypatch.setattr(key_index, "lock_writers", lock_after_a_foreign_insert)
    sql(TARGET)
    loader.spec(REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    assert steps(seen) == ["key index dropped", "key index put back"]
    assert [f["reason"] for e, f in seen if e == "key index put back"] == ["the target was written before the lock"]
    assert early(seen)[0] == ("batch merged early", 0)
    # (the later batches merge early or in phase 2 as ever, by how the threads meet; the oracle holds either way)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows + [(99, 1, "foreign")])
    assert report.counts.inserted == 10
    assert_key_back(sql)


@pytest.mark.parametrize("how", ["referenced", "deferrable", "loaded", "keep", "unique"])
def test_which_keys_go(loader: Loader, sql: Any, how: str) -> None:
    """A key a foreign key refers to, a deferrable one, a loaded target, `index_strategy = "keep"`: kept, the load
    goes as ever. A UNIQUE constraint goes and comes back as a UNIQUE constraint."""
    ddl = TARGET
    if how == "referenced":
        ddl += "; CREATE TABLE app.child (item bigint REFERENCES app.items)"
    elif how == "deferrable":
        ddl = ddl.replace("PRIMARY KEY", "PRIMARY KEY DEFERRABLE")
    elif how == "unique":
        ddl = ddl.replace("id bigint PRIMARY KEY", "id bigint NOT NULL CONSTRAINT items_id_key UNIQUE")
    sql(ddl)
    if how == "loaded":
        sql("INSERT INTO app.items (id, v, note) VALUES (99, 1, 'there')")
    loader.spec(REBUILD.replace('index_strategy = "rebuild"', 'index_strategy = "keep"') if how == "keep" else REBUILD)
    rows = ten_rows()
    loader.write("items.csv", _csv(rows))
    with events() as seen:
        report = loader.run()
    expected = _oracle(rows + ([(99, 1, "there")] if how == "loaded" else []))
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == expected
    assert report.counts.inserted == 10
    if how == "unique":
        assert steps(seen) == ["key index dropped", "key index put back"]
        assert_key_back(sql, "u", "items_id_key")
        return
    assert steps(seen) == []
    assert ("batch merged early", 2) not in early(seen)
    assert sql(KEY) == [("items_pkey", "p")]


def test_key_definition_takes_only_its_own_shape() -> None:
    target = ("app", "items")
    assert indexes.key_definition(STORED, "items_pkey", target) == (STORED.split("; ")[0], "PRIMARY KEY")
    unique = STORED.replace("PRIMARY KEY", "UNIQUE").replace("btree (id)", "btree (id) NULLS NOT DISTINCT")
    assert indexes.key_definition(unique, "items_pkey", target) == (unique.split("; ")[0], "UNIQUE")
    for bad in [STORED.replace("btree (id)", "btree (lower(id))"),            # an expression
                STORED.replace("btree (id)", "btree (id) WHERE (id > 0)"),     # a predicate
                STORED.split("; ")[0],                                         # no constraint
                STORED + "; DROP TABLE app.items",                             # more
                STORED.replace('"items_pkey" PRIMARY', '"other" PRIMARY'),     # another constraint
                STORED.replace('USING INDEX "items_pkey"', 'USING INDEX "other"'),
                STORED.replace('TABLE "app"."items"', 'TABLE "app"."other"'),  # another table
                STORED.replace("PRIMARY KEY", "EXCLUDE"),
                STORED.replace("CREATE UNIQUE INDEX", "CREATE INDEX")]:
        assert indexes.key_definition(bad, "items_pkey", target) is None, bad
    assert indexes.key_definition(STORED, "other", target) is None
    assert indexes.key_definition(STORED, "items_pkey", ("app", "other")) is None
    assert not indexes.plain_definition(STORED, "items_pkey", target)   # never taken for a secondary index


def test_a_tampered_key_row_is_refused_and_nothing_runs(loader: Loader, sql: Any) -> None:
    sql(TARGET.replace("id bigint PRIMARY KEY", "id bigint NOT NULL"))
    path = loader.spec(REBUILD)
    from pgstage.pipeline import ledger

    with psycopg.connect(loader.db_url, autocommit=True) as conn:
        ledger.ensure(conn)
        bad = STORED.replace("btree (id)", "btree ((pg_sleep(0) IS NULL))")
        conn.execute("INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id)"
                     " VALUES ('app.items', 'items_pkey', %s, 1)", (bad,))
        spec = parse_spec(path.read_text())
        with pytest.raises(UntrustedIndexDefinition) as raised:
            indexes.rebuild(conn, spec)
    assert "did not write, so it was not run" in raised.value.message
    assert sql("SELECT to_regclass('app.items_pkey')") == [(None,)]


NAMES = "CREATE SCHEMA \"we'ird\"; CREATE TABLE \"we'ird\".\"It\"\"s\" (\"k ey\" bigint CONSTRAINT \"Pk; x\" PRIMARY KEY, v int)"
NAMED = """
[pipeline]
name = "names"
target = "we'ird.It\\"s"
key = ["k ey"]
strategy = "upsert"

[source]
path = "x.csv"

[columns]
"k ey" = { from = "k", type = "bigint" }
v = { from = "v", type = "integer" }
"""


def test_a_key_with_awkward_names_is_dropped_and_made_again(db_url: str, sql: Any) -> None:
    from pgstage.pipeline import ledger

    sql(NAMES)
    spec = parse_spec(NAMED)
    assert spec.target == ("we'ird", 'It"s')
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.ensure(conn)
        assert key_index.drop_for_load(conn, spec, 1) == "Pk; x"
        assert sql("SELECT count(*) FROM pg_constraint WHERE conname = 'Pk; x'") == [(0,)]
        assert indexes.key_pending(conn, spec)
        assert indexes.rebuild(conn, spec, keys_only=True) == ["Pk; x"]
        assert not indexes.key_pending(conn, spec)
    assert sql("SELECT conname, contype FROM pg_constraint WHERE conrelid = to_regclass(%s) AND contype = 'p'",
               ('"we\'ird"."It""s"',)) == [("Pk; x", "p")]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


# (point, the n-th time it is reached): after the key's drop; inside the early transaction after the second
# batch and after the last (merged at the commit); after the key is made again; just before and after the commit
POINTS = ["key.dropped:1", "merge.early:2", "merge.early:6", "key.rebuilt:1", "merge.commit:3", "merge.after:6"]


@pytest.mark.parametrize("point", POINTS)
def test_killed_during_a_first_load_then_rerun_has_the_key_and_the_oracle(tmp_path: Path, db_url: str, sql: Any,
                                                                          point: str) -> None:
    """tests/test_crash.py's kill -9 and re-run, for a first load whose key was dropped: six batches of ten
    records (keys repeat inside a batch, never across two), with the crash suite's faults."""
    seed = POINTS.index(point)
    folder = tmp_path / "p"
    (folder / "data").mkdir(parents=True)
    (folder / "spec.toml").write_text(textwrap.dedent(crash.SPEC.format(batch=crash.BATCH, retries=0)))
    rng = random.Random(seed)
    versions = rng.sample(range(1, 10_000), 100)
    write_csv(folder / "data" / "a_base.csv", crash.records(rng, range(1, 5), versions, 5))
    pgstage.run(folder / "spec.toml", db=db_url)   # the target, created by a run, then emptied
    sql("TRUNCATE app.items; CREATE INDEX items_note ON app.items (note)")
    first = [r for b in range(6) for r in crash.records(rng, range(100 + 10 * b, 110 + 10 * b), versions, crash.BATCH)]
    write_csv(folder / "data" / "b_first.csv", first)
    code = crash.child_run(folder, db_url, point)
    assert code == -signal.SIGKILL, code
    if point != "merge.after:6":   # killed before the commit: the key is missing, and the ledger owes it
        assert sql(KEY) == []
        assert sql("SELECT index_name FROM pgstage.index_rebuilds ORDER BY 1") == [("items_note",), ("items_pkey",)]
        assert sql("SELECT count(*) FROM app.items") == [(0,)]
    report = pgstage.run(folder / "spec.toml", db=db_url)
    assert_identity(report)
    table, counts = oracle("upsert_if_newer", [first])
    assert {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")} == table
    if point != "merge.after:6":
        for key in ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale"):
            assert getattr(report.counts, key) == counts[0][key], key
    assert_key_back(sql)


def test_repair_puts_back_a_key_a_killed_first_load_left(tmp_path: Path, db_url: str, sql: Any) -> None:
    from typer.testing import CliRunner

    from pgstage.cli import app

    folder = tmp_path / "p"
    (folder / "data").mkdir(parents=True)
    (folder / "spec.toml").write_text(textwrap.dedent(crash.SPEC.format(batch=crash.BATCH, retries=0)))
    rng = random.Random(7)
    versions = rng.sample(range(1, 10_000), 100)
    write_csv(folder / "data" / "a_base.csv", crash.records(rng, range(1, 5), versions, 5))
    pgstage.run(folder / "spec.toml", db=db_url)
    sql("TRUNCATE app.items")
    write_csv(folder / "data" / "b_first.csv", crash.records(rng, range(100, 160), versions, 30))
    assert crash.child_run(folder, db_url, "key.dropped:1") == -signal.SIGKILL
    assert sql(KEY) == []
    result = CliRunner().invoke(app, ["repair", str(folder / "spec.toml"), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "rebuilt 1 index(es) (items_pkey)" in result.output
    assert sql(KEY) == [("items_pkey", "p")]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


# Any name PostgreSQL takes: quotes, spaces, capitals, keywords, non-ASCII (63 bytes at most, no NUL).
_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                 max_size=12).filter(lambda n: len(n.encode()) <= 63)
_relations = _names.filter(lambda n: "." not in n and not n.startswith("pg_"))   # a spec's `schema.table`


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(schema=_relations, table=_relations, column=_names, constraint=_names, unique=st.booleans())
def test_pgstage_takes_back_every_key_it_drops(db_url: str, schema: str, table: str, column: str, constraint: str,
                                               unique: bool) -> None:
    """Whatever the names, the stored definition passes the rebuild's shape check (else the key would never be
    dropped) and makes the same constraint again."""
    from pgstage.pipeline import ledger

    assume(constraint != table)   # the constraint's index shares the schema's namespace with the table
    spec = parse_spec(NAMED)
    spec = spec.model_copy(update={"pipeline": spec.pipeline.model_copy(update={"target": f"{schema}.{table}",
                                                                                "key": (column,)})})
    kind = psql.SQL("UNIQUE") if unique else psql.SQL("PRIMARY KEY")
    with psycopg.connect(db_url, autocommit=True) as conn:
        ledger.ensure(conn)
        conn.execute(psql.SQL("DROP SCHEMA IF EXISTS {} CASCADE; CREATE SCHEMA {}").format(
            psql.Identifier(schema), psql.Identifier(schema)))
        conn.execute(psql.SQL("CREATE TABLE {} ({} bigint NOT NULL, CONSTRAINT {} {} ({}))").format(
            psql.Identifier(schema, table), psql.Identifier(column), psql.Identifier(constraint), kind,
            psql.Identifier(column)))
        assert spec.target == (schema, table)
        assert key_index.drop_for_load(conn, spec, 1) == constraint
        assert indexes.rebuild(conn, spec) == [constraint]
        found = conn.execute("SELECT conname, contype FROM pg_constraint WHERE conrelid = %s::regclass"
                             " AND contype IN ('p', 'u')", (psql.Identifier(schema, table).as_string(conn),)).fetchall()
        assert found == [(constraint, "u" if unique else "p")]
        assert conn.execute("SELECT count(*) FROM pgstage.index_rebuilds").fetchone() == (0,)
        conn.execute(psql.SQL("DROP SCHEMA {} CASCADE").format(psql.Identifier(schema)))
