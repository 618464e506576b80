"""`pgstage backfill`: units equal to one-by-one runs, resumable after kill -9, failures isolated, shared by processes.

Three specs write one target with overlapping keys (`id` alone is the key), upsert_if_newer
on globally unique versions, so the final table is known independently: per id, the valid
row with the highest version.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgstage
from pgstage.backfill import Progress, queue
from pgstage.backfill.forecast import forecast, parse_deadline
from pgstage.report import Counts

SOURCES = ("alpha", "beta", "gamma")
START = date(2024, 3, 1)
DAYS = 30
SPEC = """
[pipeline]
name = "{name}"
target = "app.orders"
key = ["id"]
strategy = "upsert_if_newer"
version = "v"

[source]
path = "data/{name}/orders_{{date}}.csv"

[columns]
id = {{ from = "id", type = "bigint", required = true }}
v = {{ from = "v", type = "integer", required = true }}
amount = {{ from = "amount", type = "money_cents", required = true, min = 0 }}
src = {{ const = "{name}" }}

[load]
max_reject_ratio = 0.5
"""

Rows = dict[tuple[str, date], list[tuple[int, int, str]]]


def make_data(root: Path, seed: int = 18, days: int = DAYS) -> Rows:
    """Per (source, day): 15 records, ids overlapping across days and sources, ~7% with a negative amount."""
    rng = random.Random(seed)
    versions = rng.sample(range(1, 100_000), len(SOURCES) * days * 15)
    data: Rows = {}
    for name in SOURCES:
        (root / f"{name}.toml").write_text(textwrap.dedent(SPEC.format(name=name)))
        (root / "data" / name).mkdir(parents=True, exist_ok=True)
        for i in range(days):
            day = START + timedelta(days=i)
            rows = [(rng.randint(1, 120), versions.pop(), f"{rng.choice([-1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) * rng.randint(1, 999)}.{rng.randint(0, 99):02d}")
                    for _ in range(15)]
            data[(name, day)] = rows
            write(root, name, day, rows)
    return data


def write(root: Path, name: str, day: date, rows: list[tuple[int, int, str]]) -> None:
    text = "id,v,amount\n" + "".join(f"{i},{v},{a}\n" for i, v, a in rows)
    (root / "data" / name / f"orders_{day.isoformat()}.csv").write_text(text)


def oracle(data: Rows) -> dict[int, tuple[int, int, int, str]]:
    """Per id, the valid record with the highest version: (id, v, amount in cents, source)."""
    best: dict[int, tuple[int, int, int, str]] = {}
    for (name, _), rows in data.items():
        for i, v, amount in rows:
            if amount.startswith("-"):
                continue
            cents = round(float(amount) * 100)
            if i not in best or v > best[i][1]:
                best[i] = (i, v, cents, name)
    return best


def specs(root: Path) -> list[Path]:
    return [root / f"{name}.toml" for name in SOURCES]


def target(url: str) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return {r[0]: tuple(r) for r in conn.execute("SELECT id, v, amount, src FROM app.orders")}


def ledger(url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Each (pipeline, partition): its succeeded run's counts and rejects; fails if a unit ran twice."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT pipeline, partition, counts, (SELECT count(*) FROM pgstage.rejects j WHERE j.run_id = r.run_id)"
            " FROM pgstage.runs r WHERE status = 'succeeded' ORDER BY run_id").fetchall()
        assert conn.execute("SELECT count(*) FROM pgstage.runs WHERE status <> 'succeeded'").fetchone() == (0,)
    out: dict[tuple[str, str], tuple[Any, ...]] = {}
    for pipeline, partition, counts, rejects in rows:
        assert (pipeline, partition) not in out, f"{pipeline} {partition} ran twice"
        out[(pipeline, partition)] = (counts, rejects)
    return out


@pytest.fixture
def other_db(server_url: str) -> Any:
    name = f"pgstage_test_{os.getpid()}_backfill_other"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def assert_sum(report: pgstage.BackfillReport) -> None:
    c = report.counts
    assert c.read == c.rejected + c.valid
    assert c.valid == c.duplicate + c.inserted + c.updated + c.unchanged + c.stale
    json.dumps(report.as_dict())


def test_backfill_equals_the_same_units_one_by_one(tmp_path: Path, db_url: str, other_db: str) -> None:
    data = make_data(tmp_path)
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=DAYS - 1), db=db_url)
    assert_sum(report)
    assert report.units == {"pending": 0, "succeeded": 90, "skipped": 0, "failed": 0}
    for i in range(DAYS):
        for spec in specs(tmp_path):
            pgstage.run(spec, partition=START + timedelta(days=i), db=other_db)
    assert target(db_url) == target(other_db) == oracle(data)
    one_by_one = ledger(other_db)
    assert ledger(db_url) == one_by_one
    total = sum((Counts(**c) for c, _ in one_by_one.values()), Counts())
    assert report.counts == total
    assert report.counts.read == 90 * 15
    assert report.counts.rejected == sum(a.startswith("-") for rows in data.values() for _, _, a in rows)


def deadlocks(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
        assert row is not None
        return int(row[0])


def test_concurrent_units_of_specs_sharing_a_target_with_overlapping_keys(tmp_path: Path, db_url: str) -> None:
    data = make_data(tmp_path)
    before = deadlocks(db_url)
    seen: list[Progress] = []
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=DAYS - 1), jobs=3,
                              newest_first=True, db=db_url, on_progress=seen.append)
    assert_sum(report)
    assert report.units["succeeded"] == 90 and not report.failed
    assert target(db_url) == oracle(data)
    assert len(ledger(db_url)) == 90
    assert deadlocks(db_url) == before
    assert report.counts.read == 90 * 15 and report.records == 90 * 15
    assert [p.done for p in seen][-1] == 90 and seen[-1].total == 90


def test_newest_first_claims_the_latest_days_first(tmp_path: Path, db_url: str) -> None:
    make_data(tmp_path, days=3)
    pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=2), newest_first=True, db=db_url)
    with psycopg.connect(db_url) as conn:
        order = [r[0] for r in conn.execute("SELECT partition FROM pgstage.runs ORDER BY run_id")]
    assert order == [d for d in ("2024-03-03", "2024-03-02", "2024-03-01") for _ in SOURCES]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgstage.cli", "backfill", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_kill_9_mid_backfill_then_rerun_gives_the_same_result(tmp_path: Path, db_url: str, other_db: str) -> None:
    data = make_data(tmp_path, days=10)
    last = START + timedelta(days=9)
    args = [*map(str, specs(tmp_path)), "--from", START.isoformat(), "--to", last.isoformat(), "--db", db_url]
    killed = cli(*args, env={"PGSTAGE_FAULT": "merge.commit:13"})   # inside the 13th unit's merge transaction
    assert killed.returncode == -signal.SIGKILL
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT status, count(*) FROM pgstage.backfill_units GROUP BY 1 ORDER BY 1").fetchall() == [
            ("pending", 18), ("succeeded", 12)]
        assert conn.execute("SELECT count(*) FROM pgstage.runs WHERE status = 'running'").fetchone() == (1,)
    again = cli(*args, "--json")
    assert again.returncode == 0, again.stderr
    document = json.loads(again.stdout)
    assert document["resumed"] is True and document["units"]["succeeded"] == 30
    for i in range(10):
        for spec in specs(tmp_path):
            pgstage.run(spec, partition=START + timedelta(days=i), db=other_db)
    assert target(db_url) == target(other_db) == oracle({k: v for k, v in data.items() if k[1] <= last})
    assert ledger(db_url) == ledger(other_db)
    assert document["rows"] == sum((Counts(**c) for c, _ in ledger(other_db).values()), Counts()).as_dict()


def test_a_failing_unit_leaves_the_rest_loaded_and_retry_failed_runs_it(tmp_path: Path, db_url: str) -> None:
    data = make_data(tmp_path, days=4)
    missing = tmp_path / "data" / "beta" / "orders_2024-03-02.csv"
    missing.unlink()
    args = [*map(str, specs(tmp_path)), "--from", "2024-03-01", "--to", "2024-03-04", "--db", db_url]
    first = cli(*args)
    assert first.returncode == 1
    assert "failed beta 2024-03-02 (exit 1" in first.stdout
    assert "orders_2024-03-02.csv" in first.stdout
    assert "11 succeeded" in first.stdout and "1 failed" in first.stdout
    loaded = {k: v for k, v in data.items() if k != ("beta", date(2024, 3, 2))}
    assert target(db_url) == oracle(loaded)
    # Run again without --retry-failed: nothing is run, the failure is still reported.
    again = cli(*args, "--json")
    assert again.returncode == 1
    document = json.loads(again.stdout)
    assert document["units"] == {"pending": 0, "succeeded": 11, "skipped": 0, "failed": 1}
    assert [(f["pipeline"], f["partition"], f["exit_code"]) for f in document["failures"]] == [
        ("beta", "2024-03-02", 1)]
    assert document["records"] == 0
    write(tmp_path, "beta", date(2024, 3, 2), data[("beta", date(2024, 3, 2))])
    fixed = cli(*args, "--retry-failed", "--json")
    assert fixed.returncode == 0, fixed.stderr
    document = json.loads(fixed.stdout)
    assert document["units"]["succeeded"] == 12 and document["records"] == 15
    assert target(db_url) == oracle(data)


def test_join_with_three_processes_one_killed_mid_unit(tmp_path: Path, db_url: str) -> None:
    data = make_data(tmp_path, days=10)
    with psycopg.connect(db_url, autocommit=True) as conn:
        from pgstage.pipeline import ledger as pipeline_ledger
        pipeline_ledger.ensure(conn)
        queue.ensure(conn)
        refs = tuple(queue.SpecRef(str(p), p.stem, None) for p in specs(tmp_path))
        job, resumed = queue.create_or_resume(conn, refs, START, START + timedelta(days=9), False)
    assert not resumed
    procs = [subprocess.Popen([sys.executable, "-m", "pgstage.cli", "backfill", "--join", str(job.backfill_id),
                               "--db", db_url, "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **({"PGSTAGE_FAULT": "merge.commit:3"} if n == 0 else {})})
             for n in range(3)]
    codes = [p.wait(timeout=600) for p in procs]
    for p in procs:
        assert p.stdout is not None and p.stderr is not None
        p.stdout.close()
        p.stderr.close()
    assert codes[0] == -signal.SIGKILL and codes[1:] == [0, 0]
    assert target(db_url) == oracle(data)
    runs = ledger(db_url)   # every unit exactly once, the killed one resumed: none left running
    assert len(runs) == 30
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT status, count(*) FROM pgstage.backfill_units GROUP BY 1").fetchall() == [
            ("succeeded", 30)]
        # The killed process finished two units; its third was re-claimed by another process, which
        # resumed its run under the same id (reopening a run records the new pid).
        killed = procs[0].pid
        assert conn.execute("SELECT count(*) FROM pgstage.backfill_units WHERE pid = %s", (killed,)).fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM pgstage.runs WHERE pid = %s", (killed,)).fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM pgstage.runs WHERE attempts > 1").fetchone()[0] >= 1  # type: ignore[index]
        assert conn.execute("SELECT count(DISTINCT pid) FROM pgstage.backfill_units").fetchone() == (3,)


def test_usage_errors(tmp_path: Path, db_url: str) -> None:
    make_data(tmp_path, days=1)
    bad = cli(str(specs(tmp_path)[0]), "--from", "2024-03-05", "--to", "2024-03-01", "--db", db_url)
    assert bad.returncode == 2 and "--from 2024-03-05 is after --to 2024-03-01" in bad.stderr
    none = cli("--join", "99", "--db", db_url)
    assert none.returncode == 2 and "there is no backfill 99" in none.stderr
    (tmp_path / "fixed.toml").write_text(textwrap.dedent(SPEC.format(name="fixed")).replace("orders_{date}", "orders"))
    fixed = cli(str(tmp_path / "fixed.toml"), "--from", "2024-03-01", "--to", "2024-03-01", "--db", db_url)
    assert fixed.returncode == 2 and "has no {date}" in fixed.stderr
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgstage.backfills").fetchone() == (0,)


NOW = datetime(2026, 1, 10, 2, 0, tzinfo=timezone.utc)


def test_forecast_on_time_and_late() -> None:
    # 100 units in 600 s with 2 jobs: 1/6 unit/s; 2,090 left: 12,540 s, finishing 05:29.
    on_time = forecast(measured=100, elapsed_s=600, remaining=2090, jobs=2, now=NOW, deadline=NOW.replace(hour=8))
    assert on_time.rate == pytest.approx(1 / 6) and on_time.eta_s == pytest.approx(12_540)
    assert on_time.finish == NOW + timedelta(seconds=12_540) and not on_time.late and on_time.jobs_needed is None
    assert on_time.warning(2) is None
    # Deadline 04:00 (7,200 s left): 12,540 s at 2 jobs needs ceil(2 * 12,540 / 7,200) = 4 jobs.
    late = forecast(measured=100, elapsed_s=600, remaining=2090, jobs=2, now=NOW, deadline=NOW.replace(hour=4))
    assert late.late and late.jobs_needed == 4
    assert late.warning(2) == ("late: at the measured rate the backfill ends at 2026-01-10 05:29, after the deadline"
                               " 2026-01-10 04:00 (running with --jobs 2); --jobs 4 would meet it if the database keeps up")
    past = forecast(measured=1, elapsed_s=1, remaining=10, jobs=1, now=NOW, deadline=NOW - timedelta(minutes=1))
    assert past.late and past.jobs_needed is None and "the deadline has passed" in (past.warning(1) or "")
    nothing = forecast(measured=0, elapsed_s=5, remaining=10, jobs=1, now=NOW, deadline=NOW)
    assert nothing.eta_s is None and not nothing.late


def test_parse_deadline() -> None:
    assert parse_deadline("08:00", NOW) == NOW.replace(hour=8)
    assert parse_deadline("01:30", NOW) == NOW.replace(hour=1, minute=30) + timedelta(days=1)   # passed: tomorrow
    assert parse_deadline("2026-01-11T08:00", NOW) == datetime(2026, 1, 11, 8, 0, tzinfo=timezone.utc)
    with pytest.raises(pgstage.UsageError, match="neither HH:MM"):
        parse_deadline("8am", NOW)


def test_late_warning_from_the_backfill_on_a_fake_clock(tmp_path: Path, db_url: str) -> None:
    """Each unit seems to take an hour on the fake clock: with a deadline an hour away, the forecast warns."""
    make_data(tmp_path, days=2)
    ticks = iter(range(0, 10**6, 3600))
    seen: list[Progress] = []
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=1), db=db_url,
                              deadline=datetime.now().astimezone() + timedelta(hours=1),
                              clock=lambda: float(next(ticks)), on_progress=seen.append)
    assert len(report.warnings) == 1 and report.warnings[0].startswith("late: at the measured rate")
    assert "--jobs" in report.warnings[0]
    first = seen[0].forecast
    assert first.rate == pytest.approx(1 / 3600) and first.eta_s == pytest.approx(5 * 3600) and first.late
    assert first.jobs_needed == 6   # 5 hours of units at 1 job, 1 hour left (a little less: ceil)


def test_a_job_reuses_its_batch_sessions_across_units_and_renews_them_after_a_failure(
        tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A unit's pool sessions are the job's, opened once per spec, not once per day; a unit that
    fails (reject limit) closes its pool and the next unit of that spec opens a fresh one."""
    import pgstage.workers

    data = make_data(tmp_path, days=6)
    bad_day = START + timedelta(days=2)
    data[("beta", bad_day)] = [(i, v, f"-{a.lstrip('-')}") for i, v, a in data[("beta", bad_day)]]
    write(tmp_path, "beta", bad_day, data[("beta", bad_day)])
    opened: list[str] = []
    real = pgstage.workers.connect

    def counting(url: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(pgstage.workers, "connect", counting)
    report = pgstage.backfill(specs(tmp_path), start=START, end=START + timedelta(days=5), db=db_url)
    assert report.units == {"pending": 0, "succeeded": 17, "skipped": 0, "failed": 1}
    assert [(f["pipeline"], f["partition"]) for f in report.failures] == [("beta", bad_day.isoformat())]
    assert "reject" in report.failures[0]["message"].lower()
    # One job, 3 specs, single-batch units (one pool session each): 3 sessions, plus one for the
    # pool renewed after the failure; without reuse it would be 18.
    assert len(opened) == 4
    del data[("beta", bad_day)]
    assert target(db_url) == oracle(data)
    assert_sum(report)
