"""The measured scenarios, the state each needs, and the checks every result must pass.

Fairness choices (what a reader of the ratios must know):

* Every chain starts in a fresh database (CREATE DATABASE) on the same server; runs are
  sequential and every measurement is a child process (see `_child`).
* The pgstage target is created by pgstage itself: it first loads a 10-row seed file into
  the fresh database, then bench.orders and pgstage.files are TRUNCATEd and the same
  secondary index the baselines have (on updated_at) is created. So all three targets have
  a primary key on order_id and one index on updated_at. pgstage's `index_strategy = auto`
  may drop and rebuild that index around a large load; the baselines keep theirs — that is
  a pgstage feature being measured, not a handicap.
* States are chained where a scenario needs the previous one: pgstage dry_run (the clean file
  into the empty target, forecast only) → initial → noop (same file, skipped) → forced_noop
  (same file, --force: every row unchanged) → incremental; and
  bare_sql initial → bare_sql incremental. forced_noop and noop write nothing to the target,
  so incremental starts from exactly the initial load. `dirty` runs in its own database.
* Before each timed step the target is VACUUM ANALYZEd and a CHECKPOINT is forced, so no
  step pays for hint bits, autovacuum or a checkpoint caused by the step before it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from benchmarks import backfill, baselines
from benchmarks.data import Dataset, dataset, seed_file

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("initial", "incremental", "noop", "forced_noop", "dirty", "dry_run", "backfill")
# Measurements that belong to a scenario without being one (see benchmarks/backfill.py).
EXTRA = ("backfill_empty", "noop_shell", "startup", "python_bare")
PIPELINE = "bench_orders"
SPEC = """\
[pipeline]
name = "{pipeline}"
target = "bench.orders"
key = ["order_id"]
strategy = "upsert_if_newer"
version = "updated_at"

[source]
path = {path}

[columns]
order_id    = {{ from = "order_id", type = "bigint", required = true }}
email       = {{ from = "email", type = "text", normalize = ["trim", "lower"], regex = '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$' }}
total_cents = {{ from = "total", type = "money_cents", required = true, min = 0 }}
currency    = {{ from = "currency", type = "char(3)", normalize = ["trim", "upper"], in = ["USD", "EUR", "GBP"] }}
created_at  = {{ from = "created_at", type = "timestamptz", required = true }}
updated_at  = {{ from = "updated_at", type = "timestamptz", required = true }}
status      = {{ from = "status", type = "text", in = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"] }}

[load]
max_reject_ratio = 0.05
"""


class BenchmarkFailure(RuntimeError):
    """A load failed or its counts do not balance: the numbers cannot be trusted."""


@dataclass
class Bench:
    """One benchmark session: a server, a scratch directory, and everything measured so far."""

    server_url: str
    workdir: Path
    rows: int
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    checksums: dict[str, list[Any]] = field(default_factory=dict)
    trace: bool = False
    baselines: bool = True          # False: pgstage alone (a memory check at 10M rows needs no ratios)
    _dbs: int = 0

    def data(self, variant: str) -> Dataset:
        return dataset(variant, self.rows)

    def spec(self, path: Path) -> Path:
        """A spec file for one source file (all share the pipeline name, so the ledger sees one pipeline)."""
        out = self.workdir / f"spec-{path.stem}.toml"
        out.write_text(SPEC.format(pipeline=PIPELINE, path=json.dumps(str(path))), encoding="utf-8")
        return out

    @contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh database for one chain, dropped afterwards."""
        self._dbs += 1
        name = f"bench_{os.getpid()}_{self._dbs}_{label}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield make_conninfo(self.server_url, dbname=name)
        finally:
            with psycopg.connect(self.server_url, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def child(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one timed load in a child process; any failure aborts the benchmark with its stderr."""
        env = {k: v for k, v in os.environ.items() if k not in ("PGSTAGE_TRACE_SQL", "PGSTAGE_FAULT")}
        if self.trace:
            env["PGSTAGE_TRACE_SQL"] = "1"
        load = os.getloadavg()[0]        # the machine is shared: keep how busy it was with each number
        cpu, busy = children_cpu(), machine_busy()
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "benchmarks._child", json.dumps(job)], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        wall = time.perf_counter() - started
        cpu, busy = children_cpu() - cpu, machine_busy() - busy
        if proc.returncode != 0:
            raise BenchmarkFailure(f"{job['kind']} load failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(wall_s=wall, load_1m=load, cpu_s=cpu, machine_cpu_s=busy)
        if self.trace:
            result["trace"] = proc.stderr
        return result

    def finish(self, path: Path, started: float, files: dict[str, Dataset], results: dict[str, Any]) -> int:
        """Print the warnings, write the raw results as JSON; exit status 1 if anything warned."""
        for warning in self.warnings:
            print(f"WARNING: {warning}")
        elapsed = time.perf_counter() - started
        print(f"\ntotal {elapsed:.0f}s; raw results in {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({
            "when": datetime.now(timezone.utc).isoformat(timespec="seconds"), **results,
            "files": {v: {"path": str(d.path), "rows": d.rows, "bytes": d.size_bytes} for v, d in files.items()},
            "warnings": self.warnings, "elapsed_s": elapsed}, indent=2, default=str) + "\n", encoding="utf-8")
        return 1 if self.warnings else 0

    def record(self, name: str, rep: int, result: dict[str, Any], rows: int) -> dict[str, Any]:
        result.update(repeat=rep, rows=rows)
        self.raw.setdefault(name, []).append(result)
        cpu = f"  client CPU {result['cpu_s']:5.2f} s" if "cpu_s" in result else ""
        if "machine_cpu_s" in result:
            cpu += f"  machine CPU {result['machine_cpu_s']:5.2f} s"
        if "wal" in result:   # a checkpoint that starts before a load's last heap pages are read doubles its WAL
            cpu += f"  full-page images {result['wal']['wal_fpi']:,}"
        print(f"  [{rep + 1}] {name:<22} {result['seconds']:8.2f} s  {result['maxrss_kb'] / 1024:6.0f} MB{cpu}  "
              f"{json.dumps(result['counts'])}", file=sys.stderr, flush=True)
        return result


def children_cpu() -> float:
    """User + system CPU seconds of this process's children that have ended: around one child, its own (the
    whole process, start-up and exit included; a loader's client work competes with the server for the cores)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core; idle, I/O wait and steal left out): around
    one child, the server's and the client's CPU together, which on a quiet machine is what a load costs."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK")


def settle(url: str) -> None:
    """VACUUM ANALYZE the target (if any) and force a checkpoint, outside any timing."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('bench.orders')").fetchone() != (None,):
            conn.execute("VACUUM (ANALYZE) bench.orders")
        try:
            conn.execute("CHECKPOINT")
        except psycopg.errors.InsufficientPrivilege:
            pass  # --db without superuser: checkpoints then land wherever they fall


def target_checksum(url: str) -> list[Any]:
    """An order-independent digest of the typed target, to compare pgstage with bare_sql."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), sum(total_cents), sum(hashtext(email)::bigint), sum(hashtext(currency || status)::bigint),"
            " sum(extract(epoch FROM created_at))::bigint, sum(extract(epoch FROM updated_at))::bigint"
            " FROM bench.orders").fetchone()
    return [int(v) if v is not None else None for v in row or ()]


def check_identity(name: str, result: dict[str, Any]) -> None:
    """SPEC §5 on the report, independently of pgstage's own check. Raises: a broken identity voids the run."""
    c = result["counts"]
    problems = []
    if c["read"] != c["rejected"] + c["valid"]:
        problems.append(f"read {c['read']} != rejected {c['rejected']} + valid {c['valid']}")
    merged = c["duplicate"] + c["inserted"] + c["updated"] + c["unchanged"] + c["stale"]
    if result["status"] == "succeeded" and c["valid"] != merged:
        problems.append(f"valid {c['valid']} != duplicate+inserted+updated+unchanged+stale {merged}")
    if problems:
        raise BenchmarkFailure(f"{name}: accounting identity broken: {'; '.join(problems)}: {c}")


def check_expected(bench: Bench, name: str, result: dict[str, Any], status: str, expect: dict[str, int]) -> None:
    """What the generator knows the file holds; a mismatch is a finding, kept as a warning."""
    wrong = {k: (result["counts"].get(k), v) for k, v in expect.items() if result["counts"].get(k) != v}
    if result["status"] != status or wrong:
        message = f"{name}: status {result['status']} (expected {status}); (got, expected): {wrong}"
        if message not in bench.warnings:
            bench.warnings.append(message)


def _pgstage(bench: Bench, name: str, rep: int, url: str, data: Dataset, *, force: bool = False,
             dry_run: bool = False, status: str = "succeeded", expect: dict[str, int] | None = None) -> dict[str, Any]:
    settle(url)
    result = bench.child({"kind": "pgstage", "spec": str(bench.spec(data.path)), "db": url, "force": force,
                          "dry_run": dry_run})
    bench.record(name, rep, result, data.rows)
    check_identity(name, result)
    check_expected(bench, name, result, status, data.expect if expect is None else expect)
    return result


def _baseline(bench: Bench, name: str, kind: str, rep: int, url: str, data: Dataset) -> dict[str, Any]:
    settle(url)
    result = bench.child({"kind": kind, "db": url, "file": str(data.path)})
    bench.record(name, rep, result, data.rows)
    if result["counts"]["read"] != data.rows:
        raise BenchmarkFailure(f"{name}: COPY read {result['counts']['read']} rows, the file has {data.rows}")
    return result


def prepare_pgstage_target(bench: Bench, url: str) -> None:
    """Let pgstage create bench.orders from a 10-row file, then empty it and add the baselines' index."""
    seed = seed_file(bench.workdir)
    bench.child({"kind": "pgstage", "spec": str(bench.spec(seed)), "db": url})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench.orders, pgstage.files")
        conn.execute(sql.SQL("CREATE INDEX {} ON bench.orders (updated_at)").format(baselines.INDEX))


def _row_count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM bench.orders").fetchone()
    return int(row[0]) if row else -1


def run_repeat(bench: Bench, selected: set[str], rep: int) -> None:
    """One full round of every measurement the selected scenarios need."""
    clean, incremental = bench.data("clean"), bench.data("incremental")
    final_rows = clean.rows + incremental.expect["inserted"]

    if "initial" in selected and bench.baselines:
        with bench.database("naive") as url:
            with psycopg.connect(url, autocommit=True) as conn:
                baselines.setup_naive(conn)
            _baseline(bench, "naive", "naive", rep, url, clean)

    bare_state = None
    if selected & {"initial", "incremental"} and bench.baselines:
        with bench.database("bare") as url:
            with psycopg.connect(url, autocommit=True) as conn:
                baselines.setup_bare_sql(conn)
            _baseline(bench, "bare_sql", "bare_sql", rep, url, clean)
            bare_state = "initial"
            if "incremental" in selected:
                _baseline(bench, "bare_sql_incremental", "bare_sql", rep, url, incremental)
                bare_state = "incremental"
            bench.checksums.setdefault(f"bare_sql after {bare_state}", []).append(target_checksum(url))

    if selected & {"initial", "incremental", "noop", "forced_noop", "dirty", "dry_run"}:
        with bench.database("pgstage") as url:
            prepare_pgstage_target(bench, url)
            if "dry_run" in selected:   # the forecast of the initial load: nothing is written
                _pgstage(bench, "dry_run", rep, url, clean, dry_run=True)
                if _row_count(url) != 0:
                    raise BenchmarkFailure("the dry run wrote rows into the target")
            _pgstage(bench, "initial", rep, url, clean)
            state = "initial"
            if "noop" in selected:
                _pgstage(bench, "noop", rep, url, clean, status="skipped", expect={"read": 0})
                backfill.shell_noop(bench, rep, url, bench.spec(clean.path), clean.rows)
            if "forced_noop" in selected:
                _pgstage(bench, "forced_noop", rep, url, clean, force=True,
                         expect={"read": clean.rows, "unchanged": clean.rows, "inserted": 0, "updated": 0})
            if "incremental" in selected:
                _pgstage(bench, "incremental", rep, url, incremental)
                state = "incremental"
            rows = _row_count(url)
            want = final_rows if state == "incremental" else clean.rows
            if rows != want:
                raise BenchmarkFailure(f"pgstage target holds {rows} rows after {state}, expected {want}")
            checksum = target_checksum(url)
            bench.checksums.setdefault(f"pgstage after {state}", []).append(checksum)
            if bare_state == state and bench.checksums[f"bare_sql after {state}"][-1] != checksum:
                bench.warnings.append(f"repeat {rep + 1}: pgstage and bare_sql targets differ after {state}: "
                                      f"{checksum} vs {bench.checksums[f'bare_sql after {state}'][-1]}")

    if "backfill" in selected:
        backfill.run(bench, rep)

    if "dirty" in selected:
        with bench.database("dirty") as url:
            prepare_pgstage_target(bench, url)
            _pgstage(bench, "dirty", rep, url, bench.data("dirty"))
