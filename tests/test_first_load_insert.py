"""A first load into a target with a unique index on the key inserts first and counts repeated keys only when refused.

`merge.keyed._insert_optimistically`: the batch's rows go into the empty target inside a
savepoint, without the `count(DISTINCT key)` read; a repeated key makes the unique index refuse
the batch, which is then rolled back to the savepoint and written one row per key. The results
must be exactly those of deduplicating first: compared here with a plain Python oracle (the
greatest version wins, then the later record), for keys repeated within a batch and across
batches, with the counts of the §5 identity.
"""

from __future__ import annotations

import random
import signal
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import pgstage
from pgstage.pipeline import merge
from tests import test_crash as crash
from tests.conftest import Loader, assert_identity
from tests.test_merge_paths import SPEC as PATHS_SPEC
from tests.test_property import oracle, write_csv

# test_merge_paths' items, cut into batches of four records
SPEC = PATHS_SPEC.replace('name = "paths"', 'name = "first"').replace("[columns]", "[load]\nbatch_rows = 4\n\n[columns]")

Row = tuple[int, int, str]


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often the merge counted a batch's distinct keys, and which inserts it built (dedup or not)."""
    taken: Counter[str] = Counter()
    real_dups, real_insert = merge.keyed.has_duplicates, merge.keyed.build_insert

    def has_duplicates(*a: Any, **k: Any) -> bool:
        taken.update(["has_duplicates"])
        return real_dups(*a, **k)

    def build_insert(*a: Any, **k: Any) -> Any:
        taken.update([f"insert dedup={k['dedup']}"])
        return real_insert(*a, **k)

    monkeypatch.setattr(merge.keyed, "has_duplicates", has_duplicates)
    monkeypatch.setattr(merge.keyed, "build_insert", build_insert)
    return taken


def _csv(rows: list[Row]) -> str:
    return "id,v,note\n" + "".join(f"{i},{v},{n}\n" for i, v, n in rows)


def _oracle(rows: list[Row]) -> list[Row]:
    """One row per key: the greatest version, then the latest record."""
    best: dict[int, tuple[int, int, Row]] = {}
    for position, row in enumerate(rows):
        rank = (row[1], position, row)
        if row[0] not in best or rank[:2] > best[row[0]][:2]:
            best[row[0]] = rank
    return sorted(r for _, _, r in best.values())


def _load(loader: Loader, sql: Any, rows: list[Row]) -> Any:
    loader.spec(SPEC)
    loader.write("items.csv", _csv(rows))
    report = loader.run()
    assert report.status == "succeeded"
    assert_identity(report)
    expected = _oracle(rows)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == expected
    assert report.counts.inserted == len(expected)
    assert report.counts.duplicate == len(rows) - len(expected)
    assert sql("SELECT count(*) FROM pgstage.batches WHERE status = 'merged'") == [((len(rows) + 3) // 4,)]
    return report


def test_distinct_keys_are_inserted_without_counting_them(loader: Loader, sql: Any, calls: Counter[str]) -> None:
    rows = [(i, 1, f"n{i}") for i in range(1, 11)]   # three batches: 4 + 4 + 2 records
    report = _load(loader, sql, rows)
    assert report.counts.inserted == 10
    assert calls == {"insert dedup=False": 3}


def test_a_key_repeated_within_a_batch_is_refused_then_written_once(loader: Loader, sql: Any,
                                                                   calls: Counter[str]) -> None:
    # Batch 0: key 1 three times (v 1, v 3, v 2: the middle record wins by its version), key 2
    # twice at one version (the later record wins). Batch 1 holds distinct keys.
    rows = [(1, 1, "a"), (1, 3, "b"), (2, 5, "c"), (2, 5, "d"),
            (3, 1, "e"), (4, 1, "f"), (5, 1, "g"), (6, 1, "h")]
    report = _load(loader, sql, rows)
    assert (report.counts.inserted, report.counts.duplicate) == (6, 2)
    assert sql("SELECT id, note FROM app.items WHERE id IN (1, 2) ORDER BY id") == [(1, "b"), (2, "d")]
    # Batch 0 was refused, counted and written one row per key; batch 1 went in as it was.
    assert calls == {"insert dedup=False": 2, "has_duplicates": 1, "insert dedup=True": 1}


def test_keys_repeated_across_batches_are_decided_for_the_run(loader: Loader, sql: Any, calls: Counter[str]) -> None:
    # Key 1 in all three batches (the newest version is in batch 1), key 7 in batches 1 and 2 at one
    # version (the later record, batch 2's, wins), key 4 twice in batch 0 and once in batch 2.
    rows = [(1, 1, "a"), (4, 2, "b"), (4, 1, "c"), (2, 1, "d"),
            (7, 1, "e"), (1, 9, "f"), (3, 1, "g"), (5, 1, "h"),
            (7, 1, "i"), (1, 2, "j"), (4, 2, "k")]
    report = _load(loader, sql, rows)
    assert (report.counts.inserted, report.counts.duplicate) == (6, 5)
    assert sql("SELECT id, v, note FROM app.items WHERE id IN (1, 4, 7) ORDER BY id") == [
        (1, 9, "f"), (4, 2, "k"), (7, 1, "i")]
    # Cross-batch losers are set aside before the merges: no batch's insert is refused.
    assert calls["has_duplicates"] == 0 and calls["insert dedup=True"] == 0


def test_a_target_that_is_not_empty_inserts_new_keys_first_too(loader: Loader, sql: Any, calls: Counter[str]) -> None:
    """New keys into a loaded target (a backfill's next day) take the same way: insert, count only when refused."""
    _load(loader, sql, [(1, 1, "a")])
    calls.clear()
    loader.write("items.csv", _csv([(2, 1, "b"), (2, 2, "c")]))
    report = loader.run()
    assert_identity(report)
    assert (report.counts.inserted, report.counts.duplicate) == (1, 1)
    assert calls == {"insert dedup=False": 1, "has_duplicates": 1, "insert dedup=True": 1}
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == [(1, 1, "a"), (2, 2, "c")]
    calls.clear()
    loader.write("items.csv", _csv([(3, 1, "d"), (4, 1, "e")]))   # no key repeated: nothing counted
    report = loader.run()
    assert_identity(report)
    assert (report.counts.inserted, report.counts.duplicate) == (2, 0)
    assert calls == {"insert dedup=False": 1}
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == [(1, 1, "a"), (2, 2, "c"), (3, 1, "d"), (4, 1, "e")]


def test_with_a_deferrable_key_the_keys_are_counted_first(loader: Loader, sql: Any, calls: Counter[str]) -> None:
    """A deferrable key's violation would surface at no savepoint we can trust: the keys are counted first."""
    loader.spec(SPEC)
    sql("CREATE SCHEMA app")
    sql("CREATE TABLE app.items (id bigint NOT NULL, v integer, note text, _loaded_at timestamptz NOT NULL DEFAULT now(),"
        " _updated_at timestamptz NOT NULL DEFAULT now(), _run_id bigint, _row_hash bigint,"
        " CONSTRAINT items_key UNIQUE (id) DEFERRABLE INITIALLY IMMEDIATE)")
    rows = [(1, 1, "a"), (1, 2, "b"), (2, 1, "c")]
    loader.write("items.csv", _csv(rows))
    report = loader.run()
    assert_identity(report)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == _oracle(rows)
    assert calls["has_duplicates"] == 1 and calls["insert dedup=True"] == 1


def test_a_key_written_by_a_concurrent_load_is_retried_and_merged(loader: Loader, sql: Any, calls: Counter[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The target was empty when the merges were planned; another writer inserted key 3 just after.

    The batch holds no repeated key, so the index's refusal is the other writer's: the batch is
    rolled back and retried, and then merges against the row it found.
    """
    real = merge.target_is_empty
    written: list[bool] = []

    def empty_then_written(*a: Any, **k: Any) -> bool:
        found = real(*a, **k)
        if not written:
            sql("INSERT INTO app.items (id, v, note) VALUES (3, 0, 'theirs')")
            written.append(True)
        return found

    monkeypatch.setattr(merge, "target_is_empty", empty_then_written)
    loader.spec(SPEC)
    loader.write("items.csv", _csv([(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]))
    report = loader.run()
    assert_identity(report)
    assert sql("SELECT id, v, note FROM app.items ORDER BY id") == [(1, 1, "a"), (2, 1, "b"), (3, 1, "c")]
    assert (report.counts.inserted, report.counts.updated) == (2, 1)
    assert calls["has_duplicates"] >= 1


@pytest.mark.parametrize("point", ["validate.after", "merge.commit", "merge.after"])
def test_a_first_load_killed_then_rerun_equals_the_oracle(tmp_path: Path, db_url: str, sql: Any, point: str) -> None:
    """tests/test_crash.py's kill -9 and re-run, on a first load whose batches repeat keys within and across them.

    The killed attempt inserts into the empty target (refused and written again one row per key
    where a batch repeats a key); the re-run finds the target empty or not, as the kill left it.
    """
    for reach in (1, 3, 6):
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"r{reach}"
        (folder / "data").mkdir(parents=True)
        (folder / "spec.toml").write_text(textwrap.dedent(crash.SPEC.format(batch=crash.BATCH, retries=0)))
        rng = random.Random(reach)
        rows = crash.records(rng, range(1, 25), rng.sample(range(1, 10_000), 100), 6 * crash.BATCH)
        write_csv(folder / "data" / "a.csv", rows)
        assert crash.child_run(folder, db_url, f"{point}:{reach}") == -signal.SIGKILL
        report = pgstage.run(folder / "spec.toml", db=db_url)
        assert report.status == "succeeded"
        assert_identity(report)
        table, counts = oracle("upsert_if_newer", [rows])
        assert {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")} == table
        for key in ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale"):
            assert getattr(report.counts, key) == counts[0][key], (reach, key)
        assert sql("SELECT count(*), count(DISTINCT (run_id, file, record)) FROM pgstage.rejects") == [
            (report.counts.rejected, report.counts.rejected)]


@pytest.mark.parametrize("second_two", ["2,x,bad", "2,9,newer"])
def test_batches_share_keys_by_the_ranges_of_their_valid_rows(loader: Loader, sql: Any, monkeypatch: pytest.MonkeyPatch,
                                                               second_two: str) -> None:
    """Validation's one scan of a checked table counts its rejects and finds its valid rows' key range.

    Batch 1 repeats key 2 of batch 0. Rejected (a version that is no integer), the record is no
    key of the batch: the ranges 1–4 and 5–7 are disjoint and no cross-batch dedup runs. Valid,
    it makes them overlap, and the newer version wins across the batches.
    """
    sought: list[int] = []
    real = merge.find_beaten

    def find_beaten(*a: Any, **k: Any) -> None:
        sought.append(1)
        real(*a, **k)

    monkeypatch.setattr(merge, "find_beaten", find_beaten)
    loader.spec(SPEC.replace("batch_rows = 4", "batch_rows = 4\nmax_reject_ratio = 0.5"))
    loader.write("items.csv", "id,v,note\n1,1,a\n2,1,b\n3,1,c\n4,1,d\n5,1,e\n" + second_two + "\n6,1,f\n7,1,g\n")
    report = loader.run()
    assert_identity(report)
    notes = sql("SELECT id, v, note FROM app.items ORDER BY id")
    if second_two.endswith("bad"):
        assert sought == []
        assert (report.counts.rejected, report.counts.duplicate, report.counts.inserted) == (1, 0, 7)
        assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects") == [(6, "type")]
        assert notes[1] == (2, 1, "b")
    else:
        assert sought == [1]
        assert (report.counts.rejected, report.counts.duplicate, report.counts.inserted) == (0, 1, 7)
        assert notes[1] == (2, 9, "newer")
    assert [r[0] for r in notes] == [1, 2, 3, 4, 5, 6, 7]
