"""Reloads of the same bytes: records known unchanged skip validation (pipeline/known.py).

The counts and the target must be exactly those of a full validation (the property test's
oracle decides), whatever mix of identical, changed, repeated and new records a reload holds,
across batches and windows. What the shortcut changes is observable only where SPEC §4 says
so: a target row edited behind pgstage's back is not restored by a reload of the bytes that
produced it, until the spec changes.
"""

from __future__ import annotations

import itertools
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from pgstage.pipeline.extract import csv as csv_extract
from tests.conftest import Loader, assert_identity
from tests import specs
from tests.test_property import SPEC, Row, oracle, rows, write_csv

_examples = itertools.count()


def _reload(base: list[Row], seed: int) -> list[Row]:
    """Mostly the same records again, in place; some changed, some repeated, a few new."""
    rng = random.Random(seed)
    out: list[Row] = []
    for r in base:
        roll = rng.random()
        if roll < 0.70:
            out.append(r)
        elif roll < 0.80:
            out.append(Row(r.id, r.version, "9.99", r.note + "!"))
        elif roll < 0.90:
            out += [r, r]
    out += [Row(str(rng.randint(1, 9)), "8", "1.00", "new")] if rng.random() < 0.5 else []
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=st.sampled_from(["insert_only", "upsert", "upsert_if_newer"]),
       base=st.lists(rows, min_size=1, max_size=30), seed=st.integers(0, 10_000),
       batch_rows=st.sampled_from([4, 1000]), tiny=st.booleans())
def test_reload_counts_equal_a_full_validation(tmp_path: Path, db_url: str, sql: Any, monkeypatch: pytest.MonkeyPatch,
                                               strategy: str, base: list[Row], seed: int, batch_rows: int,
                                               tiny: bool) -> None:
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", 40 if tiny else 4 << 20)
    n = next(_examples)
    folder = tmp_path / f"ex{n}"
    folder.mkdir()
    version = 'version = "v"' if strategy == "upsert_if_newer" else ""
    text = SPEC.format(n=n, strategy=strategy, version=version, glob="data.csv").replace(
        "max_reject_ratio = 1.0", f"max_reject_ratio = 1.0\nbatch_rows = {batch_rows}")
    (folder / "spec.toml").write_text(text)
    files = [base, _reload(base, seed), _reload(base, seed + 1)]
    expected_table, expected_counts = oracle(strategy, files)
    for records, counts in zip(files, expected_counts):
        write_csv(folder / "data.csv", records)
        report = pgstage.run(folder / "spec.toml", db=db_url, force=True)
        assert_identity(report)
        assert {k: getattr(report.counts, k) for k in counts} == counts
    found = sql(f"SELECT id, v, amount, note FROM prop.t{n} ORDER BY id") if any(c["inserted"] for c in expected_counts) else []
    assert {r[0]: tuple(r) for r in found} == expected_table


KNOWN_SPEC = specs.template(name="orders", target="shop.orders", path="orders.csv", column_placeholders=True, columns="""
id     = {{ from = "id", type = "bigint", required = true }}
amount = {{ from = "amount", type = "money_cents", min = 0{rule} }}
note   = {{ from = "note", type = "text" }}
""", load="max_reject_ratio = 0.5")


def _orders(loader: Loader, rule: str = "") -> None:
    loader.spec(KNOWN_SPEC.format(rule=rule))


def test_reload_of_the_same_bytes_leaves_rows_edited_behind_its_back_until_the_spec_changes(
        loader: Loader, sql: Any) -> None:
    _orders(loader)
    loader.write("orders.csv", "id,amount,note\n" + "".join(f"{i},{i}.50,n{i}\n" for i in range(1, 101)))
    assert loader.run().counts.inserted == 100
    sql("UPDATE shop.orders SET note = 'edited by hand' WHERE id = 7")

    again = loader.run(force=True)
    assert (again.counts.read, again.counts.unchanged, again.counts.updated) == (100, 100, 0)
    assert sql("SELECT note FROM shop.orders WHERE id = 7") == [("edited by hand",)]

    # A new rule changes the fingerprint: every record is validated again, rejects appear,
    # and the hand-edited row, compared value by value now, is written back.
    _orders(loader, rule=", max = 9050")      # cents: ids 91..100 are above it
    checked = loader.run(force=True)
    assert checked.counts.rejected == 10 and checked.rejects_by_rule == {"amount.max": 10}
    assert (checked.counts.updated, checked.counts.unchanged) == (1, 89)
    assert sql("SELECT note FROM shop.orders WHERE id = 7") == [("n7",)]


def test_known_rows_keep_their_place_in_the_dedup(loader: Loader, sql: Any) -> None:
    """A reload repeating a key: the last record wins even when an earlier one is known."""
    _orders(loader)
    loader.write("orders.csv", "id,amount,note\n1,1.00,a\n2,2.00,b\n3,3.00,c\n")
    loader.run()
    loader.write("orders.csv", "id,amount,note\n1,1.00,a\n2,2.00,b\n3,3.00,c\n2,2.50,b2\n3,3.00,c\n")
    report = loader.run(force=True)
    assert {k: getattr(report.counts, k) for k in ("read", "duplicate", "updated", "unchanged")} == {
        "read": 5, "duplicate": 2, "updated": 1, "unchanged": 2}
    assert sql("SELECT id, amount, note FROM shop.orders ORDER BY id") == [(1, 100, "a"), (2, 250, "b2"), (3, 300, "c")]


def test_an_older_uuid_row_hash_is_left_alone(loader: Loader, sql: Any) -> None:
    sql("CREATE SCHEMA shop")
    sql("CREATE TABLE shop.orders (id bigint PRIMARY KEY, amount bigint, note text, _loaded_at timestamptz,"
        " _updated_at timestamptz, _run_id bigint, _row_hash uuid)")
    _orders(loader)
    loader.write("orders.csv", "id,amount,note\n1,1.00,a\n")
    assert loader.run().counts.inserted == 1
    assert loader.run(force=True).counts.unchanged == 1
    assert sql("SELECT _row_hash FROM shop.orders") == [(None,)]


def test_unused_fields_do_not_count_in_the_hash(loader: Loader, sql: Any) -> None:
    """The hash covers the fields the spec reads: an export's extra column may change freely."""
    _orders(loader)
    loader.write("orders.csv", "id,amount,note,exported_at\n1,1.00,a,2024-01-01\n2,2.00,b,2024-01-01\n")
    loader.run()
    hashes = sql("SELECT id, _row_hash FROM shop.orders ORDER BY id")
    loader.write("orders.csv", "id,amount,note,exported_at\n1,1.00,a,2024-01-02\n2,2.00,b,2024-01-02\n")
    assert loader.run(force=True).counts.unchanged == 2
    assert sql("SELECT id, _row_hash FROM shop.orders ORDER BY id") == hashes
    assert all(h is not None for _, h in hashes)


def test_no_shortcut_for_rules_that_look_beyond_the_record(loader: Loader, sql: Any) -> None:
    """A reference's verdict on the same bytes changes with the referenced table."""
    sql("CREATE SCHEMA ref")
    sql("CREATE TABLE ref.notes (note text PRIMARY KEY)")
    sql("INSERT INTO ref.notes VALUES ('a'), ('b')")
    loader.spec(textwrap.dedent(KNOWN_SPEC.format(rule="")).replace(
        'note   = { from = "note", type = "text" }',
        'note   = { from = "note", type = "text", references = "ref.notes(note)" }'))
    loader.write("orders.csv", "id,amount,note\n1,1.00,a\n2,2.00,b\n")
    assert loader.run().counts.inserted == 2
    sql("DELETE FROM ref.notes WHERE note = 'b'")
    report = loader.run(force=True)
    assert (report.counts.rejected, report.counts.unchanged) == (1, 1)
    assert report.rejects_by_rule == {"note.references": 1}
