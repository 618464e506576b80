"""scd2 against an independent Python model: random snapshot sequences (hypothesis), kill -9 at every
point of a multi-batch run, the database's own invariants, versions from a column, --as-of."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from tests.conftest import assert_identity
from tests.test_cli import invoke

SPEC = """
[pipeline]
name = "cust"
target = "crm.cust"
key = ["k1", "k2"]
strategy = "scd2"

[scd2]
on_missing = "{on_missing}"
track = ["email"]

[source]
path = "snap.csv"

[columns]
k1 = {{ from = "k1", type = "text" }}
k2 = {{ from = "k2", type = "text" }}
email = {{ from = "email", type = "text" }}
note = {{ from = "note", type = "text" }}

[load]
batch_rows = {batch}
max_retries = 0
"""

KEYS = [("a", "bc"), ("ab", "c"), ("x", "1"), ("x", "2"), ("y", ",")]   # ("a","bc") and ("ab","c") concatenate alike
Key = tuple[str, str]
Snapshot = tuple[Key, str | None, str | None]   # one record: key, email, note


@dataclass
class Version:
    email: str | None
    note: str | None
    start: datetime
    end: datetime | None = None
    deleted: bool = False


class Model:
    """scd2 as the docs state it, in plain Python (docs/merge.md#scd2)."""

    def __init__(self, on_missing: str) -> None:
        self.on_missing = on_missing
        self.history: dict[Key, list[Version]] = {}

    def load(self, rows: list[tuple[Key, str | None, str | None]], as_of: datetime) -> dict[str, int]:
        counts = dict(read=len(rows), duplicate=0, inserted=0, updated=0, unchanged=0, stale=0, deleted=0)
        last: dict[Key, tuple[str | None, str | None]] = {}
        for key, email, note in rows:
            counts["duplicate"] += key in last
            last[key] = (email, note)
        for key, (email, note) in last.items():
            versions = self.history.setdefault(key, [])
            latest = versions[-1] if versions else None
            if latest is None or (latest.end is not None and as_of >= latest.end):
                versions.append(Version(email, note, as_of))
                counts["inserted"] += 1
            elif latest.end is not None or as_of < latest.start:
                counts["stale"] += 1
            elif not latest.deleted and latest.email == email:
                counts["unchanged"] += 1
            elif as_of == latest.start:
                counts["stale"] += 1
            else:
                latest.end = as_of
                versions.append(Version(email, note, as_of))
                counts["updated"] += 1
        if self.on_missing != "ignore":
            newest = max(max(v.start, v.end or v.start) for vs in self.history.values() for v in vs)
            for key, versions in self.history.items():
                cur = versions[-1]
                if (key not in last and cur.end is None and not cur.deleted and cur.start < as_of
                        and as_of >= newest):
                    cur.end = as_of
                    counts["deleted"] += 1
                    if self.on_missing == "new_record":
                        versions.append(Version(cur.email, cur.note, as_of, deleted=True))
        return counts

    def table(self) -> list[tuple[Any, ...]]:
        return sorted(((*k, v.email, v.note, v.start, v.end, v.end is None, v.deleted)
                       for k, vs in self.history.items() for v in vs), key=_version_order)


def write_snapshot(folder: Path, rows: list[tuple[Key, str | None, str | None]]) -> None:
    def cell(v: str | None) -> str:
        return "" if v is None else '"' + v.replace('"', '""') + '"'
    lines = ["k1,k2,email,note", *(",".join([cell(k[0]), cell(k[1]), cell(e), cell(n)]) for k, e, n in rows)]
    (folder / "snap.csv").write_text("\n".join(lines) + "\n")


def table(sql: Any, on_missing: str) -> list[tuple[Any, ...]]:
    deleted = "_is_deleted" if on_missing == "new_record" else "false"
    return sorted(sql(f"SELECT k1, k2, email, note, _valid_from, _valid_to, _is_current, {deleted} FROM crm.cust"),
                  key=_version_order)


def _version_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return row[0], row[1], row[4]   # key, valid_from: unique per version


def as_of(day: int) -> datetime:
    return datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(days=day)


def check_counts(report: pgstage.RunReport, expected: dict[str, int]) -> None:
    assert_identity(report)
    got = report.counts.as_dict()
    assert {k: got[k] for k in expected} == expected
    assert got["rejected"] == 0


snapshots = st.lists(st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from([None, "p", "q"]),
                                        st.sampled_from([None, "n1", "n2"])), min_size=1, max_size=7),
                     min_size=1, max_size=4)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seq=snapshots, on_missing=st.sampled_from(["ignore", "close", "new_record"]))
def test_snapshot_sequences_match_the_model(tmp_path: Path, db_url: str, sql, seq: list[Any], on_missing: str) -> None:
    sql("DROP SCHEMA IF EXISTS crm CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
    folder = tmp_path / on_missing
    folder.mkdir(exist_ok=True)
    (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(on_missing=on_missing, batch=3)))
    model = Model(on_missing)
    for day, rows in enumerate(seq, 1):
        write_snapshot(folder, rows)
        report = pgstage.run(folder / "spec.toml", db=db_url, partition=f"2024-01-{day:02d}", force=True)
        check_counts(report, model.load(rows, as_of(day)))
        assert table(sql, on_missing) == model.table(), (day, rows)
    # Re-running the last snapshot is a no-op.
    before = table(sql, on_missing)
    report = pgstage.run(folder / "spec.toml", db=db_url, partition=f"2024-01-{len(seq):02d}", force=True)
    assert report.counts.inserted == report.counts.updated == report.counts.deleted == report.counts.stale == 0
    assert table(sql, on_missing) == before


def test_the_database_refuses_two_current_rows_and_overlaps(tmp_path: Path, db_url: str, sql) -> None:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC.format(on_missing="close", batch=100)))
    write_snapshot(tmp_path, [(("a", "bc"), "p", None), (("ab", "c"), "p", None)])
    pgstage.run(tmp_path / "spec.toml", db=db_url, partition="2024-01-01")
    with psycopg.connect(db_url, autocommit=True) as conn:
        insert = ("INSERT INTO crm.cust (k1, k2, email, _valid_from, _valid_to, _is_current, _scd_id, _run_id)"
                  " VALUES ('a', 'bc', 'z', %s, %s, %s, gen_random_uuid(), 0)")
        # A second current row of ("a", "bc"): refused (two open ranges always overlap, so the exclusion
        # constraint speaks first; the partial unique index stands behind it).
        with pytest.raises((psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation)):
            conn.execute(insert, (as_of(5), None, True))
        with pytest.raises(psycopg.errors.ExclusionViolation):   # a closed version overlapping the current one
            conn.execute(insert, (as_of(2), as_of(9), False))
        # Column by column: ("a","bc") beside ("ab","c") is no conflict, and a version before both is fine.
        conn.execute(insert, (as_of(-5), as_of(0), False))
    assert sql("SELECT count(*) FROM crm.cust") == [(3,)]
    assert sql("SELECT indexdef FROM pg_indexes WHERE indexname = 'cust_current'") == [
        ("CREATE UNIQUE INDEX cust_current ON crm.cust USING btree (k1, k2) WHERE _is_current",)]


def test_version_column_and_late_versions(tmp_path: Path, db_url: str, sql) -> None:
    spec = textwrap.dedent(SPEC.format(on_missing="ignore", batch=100)).replace(
        'strategy = "scd2"', 'strategy = "scd2"\nversion = "at"').replace(
        'note = { from = "note", type = "text" }', 'note = { from = "note", type = "text" }\nat = { from = "at", type = "timestamptz" }')
    (tmp_path / "spec.toml").write_text(spec)

    def load(text: str) -> pgstage.RunReport:
        (tmp_path / "snap.csv").write_text("k1,k2,email,note,at\n" + text)
        report = pgstage.run(tmp_path / "spec.toml", db=db_url)
        assert_identity(report)
        return report

    r1 = load("a,bc,p,,2024-01-05 10:00:00+00\na,bc,q,,2024-01-03 10:00:00+00\n")   # in-file: the greater version wins
    assert (r1.counts.duplicate, r1.counts.inserted) == (1, 1)
    r2 = load("a,bc,old,,2024-01-04 10:00:00+00\n")   # older than the current version: stale, history kept
    assert r2.counts.stale == 1
    r3 = load("a,bc,,,2024-01-06 10:00:00+00\n")   # p → NULL at 01-06
    assert r3.counts.updated == 1
    assert sql("SELECT email, _valid_from::text, _valid_to::text, _is_current FROM crm.cust ORDER BY _valid_from") == [
        ("p", "2024-01-05 10:00:00+00", "2024-01-06 10:00:00+00", False),
        (None, "2024-01-06 10:00:00+00", None, True)]


def test_as_of_option(tmp_path: Path, db_url: str, sql) -> None:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC.format(on_missing="ignore", batch=100)))
    write_snapshot(tmp_path, [(("a", "bc"), "p", None)])
    code, output = invoke("run", str(tmp_path / "spec.toml"), "--db", db_url, "--as-of", "2024-03-01T12:00:00+01:00")
    assert code == 0, output
    assert sql("SELECT _valid_from = '2024-03-01 11:00:00+00' FROM crm.cust") == [(True,)]
    code, output = invoke("run", str(tmp_path / "spec.toml"), "--db", db_url, "--as-of", "yesterday")
    assert code == 2 and "--as-of 'yesterday' is not a timestamp" in output
    other = tmp_path / "other.toml"
    other.write_text("\n".join(line for line in (tmp_path / "spec.toml").read_text().replace('"scd2"', '"upsert"')
                               .splitlines() if not line.startswith(("[scd2]", "on_missing", "track"))))
    code, output = invoke("run", str(other), "--db", db_url, "--as-of", "2024-03-01")
    assert code == 2 and "--as-of applies to strategy scd2; pipeline cust is upsert" in output
    assert sql("SELECT count(*) FROM crm.cust") == [(1,)]


# --- kill -9 inside a 4-batch snapshot load ---------------------------------------------------------

POINTS = [("validate.after", 4), ("merge.commit", 4), ("merge.after", 4), ("merge.swap", 1)]


def child_run(spec: Path, db_url: str, day: str, fault: str) -> int:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", db_url, "--partition", day],
                            env=env, capture_output=True, text=True, timeout=120)
    return result.returncode


@pytest.mark.parametrize("on_missing", ["close", "new_record"])
def test_kill_anywhere_then_resume(tmp_path: Path, db_url: str, sql, on_missing: str) -> None:
    rng = random.Random(2 if on_missing == "close" else 3)
    keys = [(f"k{i}", str(i % 3)) for i in range(30)]
    killed = 0
    for i, (point, n) in enumerate((p, n) for p, reach in POINTS for n in range(1, reach + 1)):
        sql("DROP SCHEMA IF EXISTS crm CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"it{i}"
        folder.mkdir()
        (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(on_missing=on_missing, batch=5)))
        model = Model(on_missing)
        first: list[Snapshot] = [(k, rng.choice(["p", "q"]), None) for k in rng.sample(keys, 15)]
        write_snapshot(folder, first)
        model.load(first, as_of(1))
        pgstage.run(folder / "spec.toml", db=db_url, partition="2024-01-01")
        second: list[Snapshot] = [(rng.choice(keys), rng.choice(["p", "q", None]), "n") for _ in range(20)]   # 4 batches of 5
        write_snapshot(folder, second)
        expected = model.load(second, as_of(2))
        code = child_run(folder / "spec.toml", db_url, "2024-01-02", f"{point}:{n}")
        assert code in (0, -signal.SIGKILL), code
        killed += code == -signal.SIGKILL
        assert sql("SELECT count(*) FROM (SELECT 1 FROM crm.cust WHERE _is_current GROUP BY k1, k2 HAVING count(*) > 1) d") \
            == [(0,)]
        report = pgstage.run(folder / "spec.toml", db=db_url, partition="2024-01-02")
        assert table(sql, on_missing) == model.table(), (point, n)
        if code == 0:
            assert report.status == "skipped"
            continue
        check_counts(report, expected)   # as an uninterrupted run
        assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []
    assert killed >= 12


def test_as_of_default_is_the_partition_day_end_in_its_timezone(tmp_path: Path, db_url: str, sql) -> None:
    spec = textwrap.dedent(SPEC.format(on_missing="ignore", batch=100)).replace('strategy = "scd2"', 'strategy = "scd2"\npartition = { column = "at", timezone = "Asia/Tokyo" }').replace(
        'note = { from = "note", type = "text" }', 'note = { from = "note", type = "text" }\nat = { from = "at", type = "date" }')
    (tmp_path / "spec.toml").write_text(spec)
    (tmp_path / "snap.csv").write_text("k1,k2,email,note,at\na,bc,p,,2024-01-15\n")
    pgstage.run(tmp_path / "spec.toml", db=db_url, partition="2024-01-15")
    assert sql("SELECT _valid_from = %s FROM crm.cust", (datetime(2024, 1, 15, 15, tzinfo=timezone.utc),)) == [(True,)]
