"""append: keyless rows identified by (_source_file, _record); a file loads once, --force or new bytes
replace exactly its rows in one transaction; kill -9 anywhere never writes a record twice."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import pgstage
from pgstage.errors import SpecError
from tests.conftest import assert_identity

SPEC = """
[pipeline]
name = "events"
target = "app.events"
strategy = "append"

[source]
path = "data/*.csv"

[columns]
kind = {{ from = "kind", type = "text" }}
n = {{ from = "n", type = "integer", min = 0 }}

[load]
batch_rows = {batch}
max_reject_ratio = 0.5
max_retries = 0
"""


def setup(folder: Path, batch: int = 100) -> Path:
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(batch=batch)))
    return folder / "spec.toml"


def write(folder: Path, name: str, rows: list[tuple[str, str]]) -> None:
    (folder / "data" / name).write_text("kind,n\n" + "".join(f"{k},{n}\n" for k, n in rows))


def rows(sql: Any) -> list[tuple[Any, ...]]:
    return sql("SELECT _source_file, _record, kind, n FROM app.events ORDER BY _source_file, _record")


def expected(folder: Path, files: dict[str, list[tuple[str, str]]]) -> list[tuple[Any, ...]]:
    """The oracle: each valid record of each file once, under its path, numbered from 1 in its file."""
    return sorted((str(folder / "data" / name), i, k, int(n)) for name, recs in files.items()
                  for i, (k, n) in enumerate(recs, 1) if int(n) >= 0)


def run(spec: Path, db_url: str, **kwargs: Any) -> pgstage.RunReport:
    report = pgstage.run(spec, db=db_url, **kwargs)
    assert_identity(report)
    return report


def test_files_append_once_and_force_replaces_exactly_their_rows(tmp_path: Path, db_url: str, sql) -> None:
    spec = setup(tmp_path)
    a = [("x", "1"), ("x", "1"), ("y", "-5"), ("z", "3")]   # a repeated record is two rows; -5 is rejected (min)
    write(tmp_path, "a.csv", a)
    first = run(spec, db_url)
    assert first.counts.as_dict() == {"read": 4, "rejected": 1, "valid": 3, "duplicate": 0, "inserted": 3,
                                      "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert rows(sql) == expected(tmp_path, {"a.csv": a})
    b = [("w", "7")]
    write(tmp_path, "b.csv", b)
    second = run(spec, db_url)
    assert (second.counts.read, second.counts.inserted) == (1, 1)   # a.csv skipped by its fingerprint
    assert rows(sql) == expected(tmp_path, {"a.csv": a, "b.csv": b})
    assert run(spec, db_url).status == "skipped"
    forced = run(spec, db_url, force=True)   # both files again: each replaces its own rows
    assert (forced.counts.inserted, forced.counts.deleted) == (4, 4)
    assert rows(sql) == expected(tmp_path, {"a.csv": a, "b.csv": b})
    a2 = [("q", "9"), ("r", "8")]
    write(tmp_path, "a.csv", a2)   # new bytes under the same name: replaces a.csv's rows, b.csv untouched
    changed = run(spec, db_url)
    assert (changed.counts.inserted, changed.counts.deleted) == (2, 3)
    assert rows(sql) == expected(tmp_path, {"a.csv": a2, "b.csv": b})
    assert sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_rp\\_%%'") == [(0,)]


def test_dry_run_forecasts_a_replacement(tmp_path: Path, db_url: str, sql) -> None:
    spec = setup(tmp_path)
    write(tmp_path, "a.csv", [("x", "1"), ("y", "2")])
    run(spec, db_url)
    before = rows(sql)
    forecast = run(spec, db_url, force=True, dry_run=True)
    assert (forecast.counts.inserted, forecast.counts.deleted) == (2, 2)
    assert rows(sql) == before


def test_append_takes_no_key(tmp_path: Path) -> None:
    spec = setup(tmp_path)
    spec.write_text(spec.read_text().replace('strategy = "append"', 'strategy = "append"\nkey = ["kind"]'))
    with pytest.raises(SpecError) as raised:
        pgstage.load_spec(spec)
    assert any("append takes no key, surrogate_key or version" in p for p in raised.value.problems)


POINTS = [("validate.after", 4), ("merge.commit", 4), ("merge.after", 4)]


def child_run(spec: Path, db_url: str, fault: str, force: bool) -> int:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", db_url,
                             *(["--force"] if force else [])], env=env, capture_output=True, text=True, timeout=120)
    return result.returncode


@pytest.mark.parametrize("force", [False, True], ids=["first_load", "forced_reload"])
def test_kill_anywhere_never_writes_a_record_twice(tmp_path: Path, db_url: str, sql, force: bool) -> None:
    rng = random.Random(7 + force)
    plan = [(p, n) for p, reach in POINTS for n in range(1, reach + 1)] + ([("merge.swap", 1)] if force else [])
    killed = 0
    for i, (point, n) in enumerate(plan):
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"it{i}"
        spec = setup(folder, batch=5)
        recs = [(rng.choice("abc"), str(rng.randint(-1, 9))) for _ in range(20)]   # 4 batches of 5
        write(folder, "a.csv", recs)
        if force:
            run(spec, db_url)
            recs = [(rng.choice("abc"), str(rng.randint(-1, 9))) for _ in range(20)]
            old = rows(sql)
            write(folder, "a.csv", recs)   # new bytes: a reload that replaces the file's rows
        code = child_run(spec, db_url, f"{point}:{n}", force)
        assert code in (0, -signal.SIGKILL), code
        killed += code == -signal.SIGKILL
        if force and code != 0:   # the replacement is one transaction: old rows whole, or new ones whole
            assert rows(sql) in (old, expected(folder, {"a.csv": recs}))
        report = run(spec, db_url)
        assert rows(sql) == expected(folder, {"a.csv": recs}), (point, n)
        if code == 0:
            continue
        valid = len(expected(folder, {"a.csv": recs}))
        assert (report.counts.read, report.counts.valid, report.counts.inserted) == (20, valid, valid)
        assert report.counts.deleted == (len(old) if force else 0)
    assert killed >= len(plan) - 1
