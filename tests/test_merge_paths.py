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
