"""Which statement merges a batch, and that each gives the exact counts (docs/merge.md).

Into an empty target: a plain INSERT. Into a target that holds rows: a classifying statement,
or INSERT … ON CONFLICT when a sample says nearly every existing row changes, and only when
the key has a unique index ON CONFLICT can use.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from pgstage.pipeline import merge
from tests.conftest import Loader

SPEC = """
[pipeline]
name = "paths"
target = "app.items"
key = ["id"]
strategy = "upsert_if_newer"
version = "v"

[source]
path = "items.csv"

[columns]
id   = { from = "id", type = "bigint" }
v    = { from = "v", type = "integer" }
note = { from = "note", type = "text" }
"""


@pytest.fixture
def paths(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    taken: Counter[str] = Counter()
    for name in ("build_insert", "build_upsert"):   # where the keyed strategies' merge looks them up
        real = getattr(merge.keyed, name)
        monkeypatch.setattr(merge.keyed, name, lambda *a, _real=real, _name=name, **k: taken.update([_name]) or _real(*a, **k))
    return taken


def _csv(rows: list[tuple[int, int, str]]) -> str:
    return "id,v,note\n" + "".join(f"{i},{v},{n}\n" for i, v, n in rows)


def test_a_batch_of_changes_is_upserted_with_exact_counts(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    loader.spec(SPEC)
    loader.write("items.csv", _csv([(i, 1, f"a{i}") for i in range(1, 201)]))
    assert loader.run().counts.inserted == 200
    assert paths == {"build_insert": 1}
    # 195 newer versions, 2 rows unchanged, 3 older versions (stale), 10 new keys.
    rows = [(i, 2, f"b{i}") for i in range(1, 196)] + [(196, 1, "a196"), (197, 1, "a197")]
    rows += [(i, 0, f"old{i}") for i in range(198, 201)] + [(i, 1, f"n{i}") for i in range(201, 211)]
    loader.write("items.csv", _csv(rows))
    report = loader.run()
    assert paths["build_upsert"] == 1
    assert {k: getattr(report.counts, k) for k in ("inserted", "updated", "unchanged", "stale")} == {
        "inserted": 10, "updated": 195, "unchanged": 2, "stale": 3}
    assert sql("SELECT count(*), sum(v), count(*) FILTER (WHERE note LIKE 'b%') FROM app.items") == [(210, 195 * 2 + 15, 195)]
    assert sql("SELECT note FROM app.items WHERE id IN (198, 200) ORDER BY id") == [("a198",), ("a200",)]


def test_a_batch_of_few_changes_is_classified_first(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    """Mostly unchanged rows: classifying first writes (and locks) only the changed ones.

    The unchanged records differ in their bytes (`01` for `1`), so the known-row shortcut
    (identical bytes) does not take them: they reach the merge and compare equal there.
    """
    loader.spec(SPEC)
    loader.write("items.csv", _csv([(i, 1, f"a{i}") for i in range(1, 201)]))
    loader.run()
    loader.write("items.csv", _csv([(i, 1, f"a{i}") for i in range(1, 191)] + [(i, 2, "c") for i in range(191, 201)])
                 .replace(",1,a", ",01,a"))
    report = loader.run()
    assert paths["build_upsert"] == 0
    assert (report.counts.updated, report.counts.unchanged) == (10, 190)


def test_without_a_usable_unique_index_the_batch_is_classified(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    """A deferrable key is no arbiter for ON CONFLICT: the classifying statement merges instead."""
    sql("CREATE SCHEMA app")
    sql("CREATE TABLE app.items (id bigint NOT NULL, v integer, note text, _loaded_at timestamptz NOT NULL DEFAULT now(),"
        " _updated_at timestamptz NOT NULL DEFAULT now(), _run_id bigint, _row_hash bigint,"
        " CONSTRAINT items_key UNIQUE (id) DEFERRABLE INITIALLY IMMEDIATE)")
    sql("INSERT INTO app.items (id, v, note) SELECT i, 1, 'x' FROM generate_series(1, 50) i")
    loader.spec(SPEC)
    loader.write("items.csv", _csv([(i, 2, "y") for i in range(1, 61)]))
    report = loader.run()
    assert paths["build_upsert"] == 0
    assert (report.counts.updated, report.counts.inserted) == (50, 10)
    assert sql("SELECT count(*) FROM app.items WHERE v = 2 AND note = 'y'") == [(60,)]


def test_every_chunk_of_a_batch_of_changes_is_upserted(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    """Each merge chunk samples its own rows: the rows earlier chunks already wrote are
    unchanged by now and must not send the later chunks to the classifying statement (which
    is slower, and retried whenever the application updates one of its rows meanwhile)."""
    loader.spec(SPEC + "\n[load]\nmerge_chunk_rows = 250\n")
    loader.write("items.csv", _csv([(i, 1, f"a{i}") for i in range(1, 2001)]))
    loader.run()
    loader.write("items.csv", _csv([(i, 2, f"b{i}") for i in range(1, 2001)]))
    report = loader.run()
    # 2,000 records in two batches (one per worker), each merged in 4 chunks of 250.
    assert paths["build_upsert"] == 8
    assert {k: getattr(report.counts, k) for k in ("read", "inserted", "updated", "unchanged", "stale")} == {
        "read": 2000, "inserted": 0, "updated": 2000, "unchanged": 0, "stale": 0}
    assert sql("SELECT count(*), sum(v), count(*) FILTER (WHERE note = 'b' || id) FROM app.items") == [(2000, 4000, 2000)]


def _expected(rows: list[tuple[int, int, str]]) -> dict[int, tuple[int, str]]:
    """upsert_if_newer's result, computed independently: per key the greatest version, then the last record."""
    out: dict[int, tuple[int, str]] = {}
    for i, v, note in rows:
        if i not in out or v >= out[i][0]:
            out[i] = (v, note)
    return out


def _table(sql: Any) -> dict[int, tuple[int, str]]:
    return {i: (v, note) for i, v, note in sql("SELECT id, v, note FROM app.items")}


def test_a_batch_of_new_keys_into_a_loaded_target_is_one_plain_insert(loader: Loader, sql: Any,
                                                                       paths: Counter[str]) -> None:
    """A backfill's next day: none of its keys is in the target, so no ON CONFLICT and no classification.

    300 new keys, five of them twice (the later record has the greater version and wins):
    305 read, 5 duplicates, 300 inserted, and the target holds both days exactly.
    """
    loader.spec(SPEC)
    day1 = [(i, 1, f"a{i}") for i in range(1, 201)]
    loader.write("items.csv", _csv(day1))
    loader.run()
    day2 = [(i, 1, f"n{i}") for i in range(1001, 1301)] + [(i, 2, f"again{i}") for i in range(1001, 1006)]
    loader.write("items.csv", _csv(day2))
    report = loader.run()
    # day 1's insert; day 2's as it is, which the key's index refuses (a key repeats), then one row per key
    assert paths == {"build_insert": 3}
    assert {k: getattr(report.counts, k) for k in ("read", "duplicate", "inserted", "updated", "unchanged", "stale")} == {
        "read": 305, "duplicate": 5, "inserted": 300, "updated": 0, "unchanged": 0, "stale": 0}
    assert _table(sql) == _expected(day1) | _expected(day2)
    assert sql("SELECT count(DISTINCT _run_id) FROM app.items WHERE id > 1000") == [(1,)]


def test_one_existing_key_after_the_sample_sends_the_batch_to_the_upsert(loader: Loader, sql: Any,
                                                                          paths: Counter[str]) -> None:
    """1,500 new keys first (the writes sample's 1,000 rows are all new), then one update, one
    unchanged row and one older version of loaded keys: the probe finds them, the batch is merged
    by the statement that counts each, not by the plain INSERT (which would refuse it)."""
    loader.spec(SPEC)
    day1 = [(i, 1, f"a{i}") for i in range(1, 11)]
    loader.write("items.csv", _csv(day1))
    loader.run()
    day2 = [(i, 1, f"n{i}") for i in range(1001, 2501)] + [(3, 2, "newer"), (4, 1, "a04"), (5, 0, "older")]
    loader.write("items.csv", _csv(day2).replace(",1,a04", ",01,a4"))   # unchanged values, other bytes
    report = loader.run()
    assert paths == {"build_insert": 1, "build_upsert": 1}
    assert {k: getattr(report.counts, k) for k in ("read", "duplicate", "inserted", "updated", "unchanged", "stale")} == {
        "read": 1503, "duplicate": 0, "inserted": 1500, "updated": 1, "unchanged": 1, "stale": 1}
    want = _expected(day1) | {i: (1, f"n{i}") for i in range(1001, 2501)} | {3: (2, "newer")}
    assert _table(sql) == want


def test_a_known_record_keeps_the_batch_from_the_plain_insert(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    """A forced reload of the same bytes plus new keys: the known records' keys are in the target."""
    loader.spec(SPEC)
    day1 = [(i, 1, f"a{i}") for i in range(1, 101)]
    loader.write("items.csv", _csv(day1))
    loader.run()
    loader.write("items.csv", _csv(day1 + [(i, 1, f"n{i}") for i in range(101, 121)]))
    report = loader.run(force=True)
    assert paths["build_insert"] == 1
    assert (report.counts.unchanged, report.counts.inserted, report.counts.updated) == (100, 20, 0)
    assert _table(sql) == _expected(day1 + [(i, 1, f"n{i}") for i in range(101, 121)])


def test_a_key_committed_between_the_probe_and_the_insert_is_counted_on_the_retry(
        loader: Loader, sql: Any, paths: Counter[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Another load commits one of the batch's keys after the probe found none: the key's unique
    index refuses the plain INSERT, the batch is rolled back and retried, and the retry counts
    that key as the update it now is. Nothing is written twice, nothing is lost."""
    loader.spec(SPEC + "\n[load]\nmax_retries = 2\n")
    loader.write("items.csv", _csv([(1, 1, "a1")]))
    loader.run()
    real = merge.keyed.holds_a_key
    raced: list[bool] = []

    def probe_then_race(*args: Any, **kwargs: Any) -> bool:
        found = real(*args, **kwargs)
        if not raced:   # the first probe only: a concurrent writer commits key 7 right after it
            raced.append(found)
            sql("INSERT INTO app.items (id, v, note) VALUES (7, 1, 'theirs')")
        return found

    monkeypatch.setattr(merge.keyed, "holds_a_key", probe_then_race)
    loader.write("items.csv", _csv([(i, 2, f"n{i}") for i in range(5, 10)]))
    report = loader.run()
    assert raced == [False]
    assert paths == {"build_insert": 2, "build_upsert": 1}   # the first load's, the refused one, the retry's
    assert {k: getattr(report.counts, k) for k in ("read", "inserted", "updated", "unchanged", "stale")} == {
        "read": 5, "inserted": 4, "updated": 1, "unchanged": 0, "stale": 0}
    assert _table(sql) == {1: (1, "a1"), **{i: (2, f"n{i}") for i in range(5, 10)}}


def test_every_chunk_of_new_keys_is_a_plain_insert(loader: Loader, sql: Any, paths: Counter[str]) -> None:
    """Each merge chunk probes its own rows: 500 new keys in chunks of 100 are five plain INSERTs."""
    loader.spec(SPEC + "\n[load]\nmerge_chunk_rows = 100\nworkers = 1\n")
    loader.write("items.csv", _csv([(1, 1, "a1")]))
    loader.run()
    rows = [(i, 1, f"n{i}") for i in range(2, 502)]
    loader.write("items.csv", _csv(rows))
    report = loader.run()
    assert paths == {"build_insert": 6}
    assert (report.counts.read, report.counts.inserted) == (500, 500)
    assert _table(sql) == {1: (1, "a1")} | _expected(rows)
