"""replace_partition beyond the case folders: usage and spec errors, dry run, and kill -9 at every
point of a multi-batch run (the partition is never seen half replaced; resume = uninterrupted)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import pgstage
from pgstage.errors import SpecError, UsageError
from tests.conftest import assert_identity
from tests.test_cli import invoke

SPEC = """
[pipeline]
name = "rp"
target = "app.events"
{key}
strategy = "replace_partition"
partition = {{ column = "at", grain = "day", timezone = "Europe/Paris", native = {native} }}

[source]
path = "data/{{date}}.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
at = {{ from = "at", type = "timestamptz" }}
amount = {{ from = "amount", type = "integer", min = 0 }}

[load]
batch_rows = {batch}
max_reject_ratio = 0.5
max_retries = 0
"""

PARIS = timezone(timedelta(hours=1))   # January: Paris is UTC+1


def write_spec(folder: Path, *, keyed: bool = True, native: bool = False, batch: int = 5) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    path = folder / "spec.toml"
    path.write_text(textwrap.dedent(SPEC.format(key='key = ["id"]' if keyed else "", native=str(native).lower(),
                                                batch=batch)))
    return path


Row = tuple[int, datetime, int]


def write_day(folder: Path, day: str, rows: list[tuple[str, str, str]]) -> None:
    lines = ["id,at,amount", *(",".join(r) for r in rows)]
    (folder / "data" / f"{day}.csv").write_text("\n".join(lines) + "\n")


def day_rows(rng: random.Random, day: int, ids: range, n: int) -> tuple[list[tuple[str, str, str]], dict[int, Row]]:
    """Records of Paris day 2024-01-<day>, ~15% outside it or negative; the oracle's rows (last record per id wins)."""
    records: list[tuple[str, str, str]] = []
    kept: dict[int, Row] = {}
    start = datetime(2024, 1, day, tzinfo=PARIS)
    for _ in range(n):
        key = rng.choice(ids)
        kind = rng.random()
        seconds = rng.randint(0, 86399)
        if kind < 0.08:   # the next Paris day: rule partition
            seconds += 86400
        at = start + timedelta(seconds=seconds)
        amount = -1 if 0.08 <= kind < 0.15 else rng.randint(0, 999)
        records.append((str(key), at.isoformat(sep=" "), str(amount)))
        if kind >= 0.15:
            kept[key] = (key, at.astimezone(timezone.utc), amount)
    return records, kept


def table(sql: Any) -> dict[int, Row]:
    return {r[0]: (r[0], r[1], r[2]) for r in sql("SELECT id, at, amount FROM app.events")}


def child_run(spec: Path, db_url: str, day: str, fault: str) -> int:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", db_url,
                             "--partition", day], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode


# (point, how often the 4-batch replacing run reaches it)
POINTS = [("validate.after", 4), ("merge.commit", 4), ("merge.after", 4), ("merge.swap", 1)]
# delete + insert only: killed with the day's rows deleted early, uncommitted, while the last batch validates
EARLY = [("merge.early_delete", 1)]


@pytest.mark.parametrize("native", [False, True], ids=["delete_insert", "native"])
def test_kill_anywhere_never_half_replaces(tmp_path: Path, db_url: str, sql, native: bool) -> None:
    rng = random.Random(15 + native)
    plan = [(point, n) for point, reach in POINTS + ([] if native else EARLY) for n in range(1, reach + 1)]
    killed = 0
    for i, (point, n) in enumerate(plan):
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"it{i}"
        spec = write_spec(folder, native=native)
        other, other_rows = day_rows(rng, 16, range(100, 130), 12)
        old, old_rows = day_rows(rng, 15, range(1, 40), 12)
        write_day(folder, "2024-01-16", other)
        write_day(folder, "2024-01-15", old)
        pgstage.run(spec, db=db_url, partition="2024-01-16")
        pgstage.run(spec, db=db_url, partition="2024-01-15")
        before = table(sql)
        assert before == {**other_rows, **old_rows}
        new, new_rows = day_rows(rng, 15, range(1, 40), 20)   # 20 records: 4 batches of 5
        write_day(folder, "2024-01-15", new)
        code = child_run(spec, db_url, "2024-01-15", f"{point}:{n}")
        assert code in (0, -signal.SIGKILL), code
        killed += code == -signal.SIGKILL
        if point == "merge.early_delete":   # reached: the single batch-file run deletes early
            assert code == -signal.SIGKILL
        after_kill = table(sql)
        # Never half replaced: the old partition whole, or (the swap committed) the new one whole.
        assert after_kill in (before, {**other_rows, **new_rows}), (point, n)
        report = pgstage.run(spec, db=db_url, partition="2024-01-15")
        assert_identity(report)
        assert table(sql) == {**other_rows, **new_rows}, (point, n)
        if code == 0:
            assert report.status == "skipped"
            continue
        # Counts as an uninterrupted run: every record read once, one row per kept id, the old day deleted.
        rejected = sum(1 for r in new if int(r[2]) < 0 or not r[1].startswith("2024-01-15"))
        assert report.counts.as_dict() == {
            "read": 20, "rejected": rejected, "valid": 20 - rejected,
            "duplicate": 20 - rejected - len(new_rows), "inserted": len(new_rows), "updated": 0, "unchanged": 0,
            "stale": 0, "deleted": len(old_rows)}, (point, n)
        assert sql("SELECT count(*), count(DISTINCT record) FROM pgstage.rejects WHERE run_id = %s",
                   (report.run_id,)) == [(rejected, rejected)]
        assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []
        if native:
            assert sql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'app.events'::regclass ORDER BY 1") == [
                ("events_p20240115",), ("events_p20240116",)]
    assert killed >= len(plan) - 1


def test_without_partition_is_a_usage_error(tmp_path: Path, db_url: str, sql) -> None:
    spec = write_spec(tmp_path)
    write_day(tmp_path, "2024-01-15", [("1", "2024-01-15 10:00:00+01", "5")])
    with pytest.raises(UsageError) as raised:
        pgstage.run(spec, db=db_url)
    assert raised.value.exit_code == 2
    assert "pipeline rp replaces a partition: say which one with --partition DATE" in str(raised.value)
    code, output = invoke("run", str(spec), "--db", db_url)
    assert code == 2
    assert "say which one with --partition DATE" in output and "Traceback" not in output
    # Refused before any database work: no ledger, no target.
    assert sql("SELECT to_regclass('pgstage.runs'), to_regclass('app.events')") == [(None, None)]


def test_spec_problems_are_listed(tmp_path: Path) -> None:
    bad = """
    [pipeline]
    name = "x"
    target = "app.t"
    strategy = "replace_partition"

    [source]
    path = "x.csv"

    [columns]
    id = { from = "id", type = "bigint" }
    """
    (tmp_path / "a.toml").write_text(textwrap.dedent(bad))
    with pytest.raises(SpecError) as raised:
        pgstage.load_spec(tmp_path / "a.toml")
    assert raised.value.exit_code == 2
    assert any("replace_partition needs partition = " in p for p in raised.value.problems)
    (tmp_path / "b.toml").write_text(textwrap.dedent(bad.replace('"replace_partition"', '"upsert"')))
    with pytest.raises(SpecError) as raised:
        pgstage.load_spec(tmp_path / "b.toml")
    assert any("key is missing: strategy upsert needs the business key" in p for p in raised.value.problems)
    (tmp_path / "c.toml").write_text(textwrap.dedent(bad.replace(
        'strategy = "replace_partition"', 'strategy = "replace_partition"\npartition = { column = "at" }')))
    with pytest.raises(SpecError) as raised:
        pgstage.load_spec(tmp_path / "c.toml")
    assert any("pipeline.partition: column 'at' is not a column" in p for p in raised.value.problems)


def test_partition_column_must_be_a_date_or_time(tmp_path: Path, db_url: str, sql) -> None:
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace('type = "timestamptz"', 'type = "text"'))
    write_day(tmp_path, "2024-01-15", [("1", "x", "5")])
    with pytest.raises(SpecError) as raised:
        pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert "partition.column 'at' is text; a partition is cut from a date, timestamp or timestamptz column" \
        in str(raised.value)
    assert sql("SELECT to_regclass('app.events')") == [(None,)]


def test_dry_run_forecasts_the_swap(tmp_path: Path, db_url: str, sql) -> None:
    spec = write_spec(tmp_path, keyed=False)
    write_day(tmp_path, "2024-01-15", [("1", "2024-01-15 00:00:00+01", "5"), ("2", "2024-01-15 23:59:59+01", "6"),
                                       ("3", "2024-01-16 00:00:00+01", "7")])
    first = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert (first.counts.inserted, first.counts.rejected, first.counts.deleted) == (2, 1, 0)
    write_day(tmp_path, "2024-01-15", [("4", "2024-01-15 12:00:00+01", "8")] * 3)
    before = table(sql)
    forecast = pgstage.run(spec, db=db_url, partition="2024-01-15", dry_run=True)
    assert forecast.dry_run and forecast.counts.as_dict() == {
        "read": 3, "rejected": 0, "valid": 3, "duplicate": 0, "inserted": 3, "updated": 0, "unchanged": 0,
        "stale": 0, "deleted": 2}
    assert table(sql) == before
    real = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert real.counts == forecast.counts
    assert sql("SELECT id, amount FROM app.events ORDER BY id") == [(4, 8), (4, 8), (4, 8)]


def test_keyless_run_of_several_batches_keeps_every_record(tmp_path: Path, db_url: str, sql) -> None:
    """Without a key nothing is a duplicate, across batches too (no cross-batch dedup runs)."""
    spec = write_spec(tmp_path, keyed=False, batch=2)
    records = [("1", "2024-01-15 10:00:00+01", "5")] * 3 + [("2", "2024-01-15 11:00:00+01", "6")] * 2
    write_day(tmp_path, "2024-01-15", records)
    report = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert_identity(report)
    assert (report.counts.read, report.counts.duplicate, report.counts.inserted) == (5, 0, 5)
    assert sql("SELECT id, amount FROM app.events ORDER BY id") == [(1, 5)] * 3 + [(2, 6)] * 2


def test_native_spec_on_a_plain_table_is_explained(tmp_path: Path, db_url: str, sql) -> None:
    """A target pgstage created without native partitions is not swapped into: the mismatch is named (exit 2)."""
    spec = write_spec(tmp_path)
    write_day(tmp_path, "2024-01-15", [("1", "2024-01-15 10:00:00+01", "5")])
    pgstage.run(spec, db=db_url, partition="2024-01-15")
    native = write_spec(tmp_path, native=True)
    with pytest.raises(pgstage.PgstageError) as raised:
        pgstage.run(native, db=db_url, partition="2024-01-15")
    assert raised.value.exit_code == 2
    assert "partition.native is set but the table is not PARTITION BY RANGE (at)" in str(raised.value)
    assert sql("SELECT id, amount FROM app.events") == [(1, 5)]


def test_repeated_keys_in_the_swapping_batch(tmp_path: Path, db_url: str, sql) -> None:
    """The last batch goes in uncounted; the unique index's refusal of a repeated key makes it count
    and write one row per key, and a key still refused (it lives in another day) stops the run."""
    spec = write_spec(tmp_path, batch=100)
    write_day(tmp_path, "2024-01-16", [("7", "2024-01-16 10:00:00+01", "70")])
    pgstage.run(spec, db=db_url, partition="2024-01-16")
    write_day(tmp_path, "2024-01-15", [("1", "2024-01-15 09:00:00+01", "10"), ("2", "2024-01-15 10:00:00+01", "20")])
    pgstage.run(spec, db=db_url, partition="2024-01-15")
    # ids 1 and 3 twice each (the later record wins), 4 once: 2 duplicates.
    write_day(tmp_path, "2024-01-15", [("1", "2024-01-15 11:00:00+01", "11"), ("3", "2024-01-15 12:00:00+01", "30"),
                                       ("1", "2024-01-15 13:00:00+01", "12"), ("4", "2024-01-15 14:00:00+01", "40"),
                                       ("3", "2024-01-15 15:00:00+01", "31")])
    report = pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert_identity(report)
    assert report.counts.as_dict() == {"read": 5, "rejected": 0, "valid": 5, "duplicate": 2, "inserted": 3,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 2}
    assert sql("SELECT id, amount FROM app.events ORDER BY id") == [(1, 12), (3, 31), (4, 40), (7, 70)]
    # A repeated key and a key of the 16th in one batch: after the dedup, the 16th's key is still refused.
    write_day(tmp_path, "2024-01-15", [("5", "2024-01-15 11:00:00+01", "50"), ("5", "2024-01-15 12:00:00+01", "51"),
                                       ("7", "2024-01-15 13:00:00+01", "77")])
    with pytest.raises(pgstage.PgstageError) as raised:
        pgstage.run(spec, db=db_url, partition="2024-01-15")
    assert raised.value.exit_code == 1
    assert "partition 2024-01-15: a key of its rows is already in app.events outside the partition" in str(raised.value)
    assert sql("SELECT id, amount FROM app.events ORDER BY id") == [(1, 12), (3, 31), (4, 40), (7, 70)]
