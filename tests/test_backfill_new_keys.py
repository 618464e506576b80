"""A backfill's days of new keys are inserted first; repeated keys are counted only when the key's index refuses them.

Eight daily files of one upsert_if_newer pipeline, backfilled on two jobs. Days 0–5 hold only
new keys, and days 1, 3 and 5 repeat two of them (a newer version after an older one, and one
version twice: the later record wins); days 6 and 7 also carry keys of day 0 (a newer version,
an older one, and the same record again). The final table and every unit's counts are compared
with a plain Python oracle; the merge counts a day's distinct keys only where the day repeats a
key or holds keys the target has.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage.pipeline import merge
from tests.conftest import Loader
from tests.test_first_load_insert import calls  # noqa: F401  (the fixture: which inserts and key counts a merge ran)

START = date(2024, 5, 1)
DAYS = 8
SPEC = """
[pipeline]
name = "days"
target = "app.items"
key = ["id"]
strategy = "upsert_if_newer"
version = "v"

[source]
path = "data/items_{date}.csv"

[columns]
id   = { from = "id", type = "bigint", required = true }
v    = { from = "v", type = "integer" }
note = { from = "note", type = "text" }
"""

Row = tuple[int, int, str]


def days() -> list[list[Row]]:
    out: list[list[Row]] = []
    for d in range(DAYS):
        rows = [(100 * d + i, 1, f"n{100 * d + i}") for i in range(1, 21)]
        if d in (1, 3, 5):   # within the day: v 5 beats v 1; two records of v 1, the later wins
            rows += [(100 * d + 1, 5, f"newer{d}"), (100 * d + 2, 1, f"later{d}")]
        if d == 6:           # day 0's key 3 at a newer version, key 4 at an older one
            rows += [(3, 9, "update"), (4, 0, "older")]
        if d == 7:           # day 0's record of key 5 again: unchanged
            rows += [(5, 1, "n5")]
        out.append(rows)
    return out


def oracle(data: list[list[Row]]) -> tuple[dict[int, tuple[int, str]], list[dict[str, int]]]:
    """The table after the days in order, and each day's counts: within a day the greatest version wins,
    then the later record; against the table, only a greater version overwrites (upsert_if_newer)."""
    table: dict[int, tuple[int, str]] = {}
    counts: list[dict[str, int]] = []
    for rows in data:
        best: dict[int, tuple[int, str]] = {}
        for i, v, note in rows:
            if i not in best or v >= best[i][0]:
                best[i] = (v, note)
        c = {"read": len(rows), "duplicate": len(rows) - len(best), "inserted": 0, "updated": 0,
             "unchanged": 0, "stale": 0}
        for i, row in best.items():
            if i not in table:
                c["inserted"] += 1
                table[i] = row
            elif row == table[i]:
                c["unchanged"] += 1
            elif row[0] > table[i][0]:
                c["updated"] += 1
                table[i] = row
            else:
                c["stale"] += 1
        counts.append(c)
    return table, counts


def test_a_backfill_of_days_with_repeated_keys_equals_the_oracle(tmp_path: Path, db_url: str,
                                                                 calls: Counter[str]) -> None:
    data = days()
    (tmp_path / "data").mkdir()
    for d, rows in enumerate(data):
        text = "id,v,note\n" + "".join(f"{i},{v},{n}\n" for i, v, n in rows)
        (tmp_path / "data" / f"items_{START + timedelta(days=d)}.csv").write_text(text)
    spec = tmp_path / "days.toml"
    spec.write_text(textwrap.dedent(SPEC))
    report = pgstage.backfill([spec], start=START, end=START + timedelta(days=DAYS - 1), jobs=2, db=db_url)
    assert report.units == {"pending": 0, "succeeded": DAYS, "skipped": 0, "failed": 0}
    table, counts = oracle(data)
    with psycopg.connect(db_url) as conn:
        assert {i: (v, note) for i, v, note in conn.execute("SELECT id, v, note FROM app.items")} == table
        ledger: dict[str, dict[str, int]] = dict(conn.execute(
            "SELECT partition, counts FROM pgstage.runs WHERE status = 'succeeded'").fetchall())
    assert len(ledger) == DAYS
    for d in range(DAYS):
        unit = ledger[(START + timedelta(days=d)).isoformat()]
        assert {k: unit[k] for k in counts[d]} == counts[d], d
        assert unit["read"] == unit["rejected"] + unit["valid"]
        assert unit["valid"] == sum(unit[k] for k in ("duplicate", "inserted", "updated", "unchanged", "stale"))
    c = report.counts
    assert (c.read, c.duplicate, c.inserted, c.updated, c.unchanged, c.stale) == (
        8 * 20 + 3 * 2 + 2 + 1, 6, 160, 1, 1, 1)
    # Days 0–5 go in as they are; days 1, 3 and 5 are refused by the key's index, counted and
    # written one row per key; days 6 and 7 hold day 0's keys: counted, then classified or upserted.
    assert calls == {"insert dedup=False": 6, "has_duplicates": 5, "insert dedup=True": 3}


PATHS = SPEC.replace('name = "days"', 'name = "above"').replace('path = "data/items_{date}.csv"', 'path = "items.csv"')


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """What each `keys above target?` answered (None: not asked), and a False for each per-row probe."""
    seen: list[bool | None] = []
    real_above, real_probe = merge.keyed.build_above_target, merge.keyed.build_holds_a_key

    def above(*a: Any, **k: Any) -> Any:
        built = real_above(*a, **k)
        if built is None:
            seen.append(None)
        return built

    def probe(*a: Any, **k: Any) -> Any:
        seen.append(False)
        return real_probe(*a, **k)

    monkeypatch.setattr(merge.keyed, "build_above_target", above)
    monkeypatch.setattr(merge.keyed, "build_holds_a_key", probe)
    return seen


def _csv(rows: list[Row]) -> str:
    return "id,v,note\n" + "".join(f"{i},{v},{n}\n" for i, v, n in rows)


def test_a_day_above_the_targets_keys_is_inserted_without_a_probe(loader: Loader, sql: Any,
                                                                   probes: list[bool | None]) -> None:
    """Keys above the target's greatest: one max() of the key index tells, no probe a row. Keys below it,
    absent or present, are probed as before; the table equals the oracle's after every day."""
    loader.spec(PATHS)
    data: list[list[Row]] = [
        [(i, 1, f"a{i}") for i in range(1, 201)],                                  # into the empty target
        [(i, 1, f"b{i}") for i in range(1001, 1301)] + [(1001, 2, "b1001 again")],  # above 200: no probe
        [(i, 1, f"c{i}") for i in range(500, 511)],                                # below 1300, absent: probed
        [(i, 1, f"d{i}") for i in range(2000, 2011)] + [(5, 3, "update")],         # key 5 is there: probed, found
    ]
    want: list[list[bool | None]] = [[], [], [False], [False]]
    for day, rows in enumerate(data):
        probes.clear()
        loader.write("items.csv", _csv(rows))
        report = loader.run()
        assert report.status == "succeeded"
        table, counts = oracle(data[:day + 1])
        assert {k: getattr(report.counts, k) for k in counts[-1]} == counts[-1], day
        assert {i: (v, n) for i, v, n in sql("SELECT id, v, note FROM app.items")} == table, day
        assert probes == want[day], day


def test_without_a_btree_index_leading_with_the_key_the_day_is_probed(loader: Loader, sql: Any,
                                                                      probes: list[bool | None]) -> None:
    """A unique index on (note, id) serves ON CONFLICT (id, note) but cannot give max(id) cheaply: probed."""
    spec = PATHS.replace('key = ["id"]', 'key = ["id", "note"]').replace('strategy = "upsert_if_newer"\nversion = "v"',
                                                                          'strategy = "upsert"')
    sql("CREATE SCHEMA app")
    sql("CREATE TABLE app.items (id bigint NOT NULL, v integer, note text NOT NULL, _loaded_at timestamptz NOT NULL"
        " DEFAULT now(), _updated_at timestamptz NOT NULL DEFAULT now(), _run_id bigint, _row_hash bigint,"
        " CONSTRAINT items_key UNIQUE (note, id))")
    loader.spec(spec)
    loader.write("items.csv", _csv([(i, 1, "x") for i in range(1, 11)]))
    loader.run()
    probes.clear()
    loader.write("items.csv", _csv([(i, 1, "x") for i in range(11, 21)]))
    report = loader.run()
    assert (report.counts.inserted, report.counts.updated) == (10, 0)
    assert probes == [False]
    assert sql("SELECT count(*), min(id), max(id) FROM app.items") == [(20, 1, 20)]


def test_a_text_key_is_always_probed(loader: Loader, sql: Any, probes: list[bool | None]) -> None:
    """A text key's least value and the target's greatest may sort by different collations: never compared."""
    loader.spec(PATHS.replace('id   = { from = "id", type = "bigint", required = true }',
                              'id   = { from = "id", type = "text", required = true }'))
    loader.write("items.csv", _csv([(i, 1, "x") for i in range(10, 20)]))
    loader.run()
    probes.clear()
    loader.write("items.csv", _csv([(i, 1, "y") for i in range(20, 30)]))
    report = loader.run()
    assert report.counts.inserted == 10
    assert probes == [None, False]
    assert sql("SELECT count(*) FROM app.items") == [(20,)]
