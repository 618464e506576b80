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
from pgstage.pipeline.merge import keyed as _keyed  # noqa: F401  (merge.keyed is imported lazily; patched below)

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


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How often a merge counted a batch's distinct keys, and which inserts it built (both jobs' threads)."""
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
        ledger = dict(conn.execute("SELECT partition, counts FROM pgstage.runs WHERE status = 'succeeded'").fetchall())
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
