"""Production-safety benchmarks (docs/production.md): what the throttle's checks cost, and what a
load does to a live workload's latency with and without bounded merge transactions.

```
python -m benchmarks.production                                  # 2M rows, 3 rounds (lead's machine)
python -m benchmarks.production --rows 20000 --repeat 1 --chunk 2000   # does it work (~1 min)
python -m benchmarks.production --only checks | --only probe
```

1. `checks`: the initial load (clean file into an empty target) and the incremental load
   onto it, each timed with no throttle settings and with every check enabled at limits
   that never trigger (`max_replica_lag`, `max_replica_lag_bytes`, `max_active_sessions`,
   `throttle_query`), in the same run, alternating which goes first each round. The ratio
   of medians is the checks' cost; the goal is ≤ 1.02. Without a replica the lag query
   reads an empty pg_stat_replication: its cost per check is the same order either way.
2. `probe`: a client in a thread does primary-key lookups on the target and small updates
   of a separate hot table (`bench.hot`, 1,000 rows) in a loop, one statement at a time,
   and records each statement's latency: first with the server idle (the loaded target in
   place), then during the incremental load, for each configuration: one transaction per
   batch (the default), `merge_chunk_rows = --chunk` (50,000), and chunks plus the checks.
   p50/p99 in milliseconds. Updates of the loaded rows themselves are not probed: a
   concurrent change of a row a merge is writing makes that batch roll back and retry
   (merge.py), which would measure retries, not latency.

Every load runs in this process against a fresh database of one server (an embedded one
unless --db); the machine's 1-minute load average is printed with each number, because on a
shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgstage
import pgstage.run  # noqa: F401  (pgstage imports each name at first use: the pipeline's imports before any clock)
from benchmarks import server
from benchmarks.data import dataset
from benchmarks.scenarios import PIPELINE, SPEC

ROOT = Path(__file__).resolve().parent.parent
NEVER = ('max_replica_lag = "1h"\nmax_replica_lag_bytes = "1TB"\nmax_active_sessions = 100000\n'
         'throttle_query = "select false"\n')


def configs(chunk: int) -> dict[str, str]:
    return {"one transaction per batch": "", f"merge_chunk_rows = {chunk}": f"merge_chunk_rows = {chunk}\n",
            "chunks + throttle checks": f"merge_chunk_rows = {chunk}\n" + NEVER}

HOT_ROWS = 1000
IDLE_S = 3.0


def spec_file(workdir: Path, path: Path, extra: str, tag: str) -> Path:
    out = workdir / f"spec-{tag}-{path.stem}.toml"
    out.write_text(SPEC.format(pipeline=PIPELINE, path=json.dumps(str(path))) + extra, encoding="utf-8")
    return out


@contextmanager
def fresh_database(server_url: str, label: str) -> Iterator[str]:
    name = f"bench_prod_{os.getpid()}_{label}_{time.monotonic_ns()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield make_conninfo(server_url, dbname=name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def timed_run(spec: Path, url: str) -> tuple[float, pgstage.RunReport]:
    started = time.perf_counter()
    report = pgstage.run(spec, db=url)
    seconds = time.perf_counter() - started
    if report.status != "succeeded":
        raise SystemExit(f"{spec.name}: {report.status}: {report.message}")
    return seconds, report


def settle(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('bench.orders')").fetchone() != (None,):
            conn.execute("VACUUM (ANALYZE) bench.orders")
        conn.execute("CHECKPOINT")


# --- 1. the checks' cost --------------------------------------------------------------------------

def checks(server_url: str, workdir: Path, rows: int, repeat: int) -> dict[str, Any]:
    clean, incremental = dataset("clean", rows), dataset("incremental", rows)
    times: dict[str, list[float]] = {f"{step} {mode}": [] for step in ("initial", "incremental")
                                     for mode in ("plain", "checked")}
    for rep in range(repeat):
        modes = ("plain", "checked") if rep % 2 == 0 else ("checked", "plain")
        for mode in modes:
            extra = NEVER if mode == "checked" else ""
            with fresh_database(server_url, mode) as url:
                for step, data in (("initial", clean), ("incremental", incremental)):
                    settle(url)
                    seconds, _ = timed_run(spec_file(workdir, data.path, extra, mode), url)
                    times[f"{step} {mode}"].append(seconds)
                    print(f"  [{rep + 1}] {step:<12} {mode:<8} {seconds:8.2f} s  load {os.getloadavg()[0]:.1f}",
                          file=sys.stderr, flush=True)
    result = {name: statistics.median(v) for name, v in times.items()}
    for step in ("initial", "incremental"):
        result[f"{step} ratio"] = result[f"{step} checked"] / result[f"{step} plain"]
    return {"medians_s": result, "raw_s": times}


# --- 2. the live-workload probe -------------------------------------------------------------------------

class Probe:
    """PK lookups and small updates in a loop on one session; latencies by phase."""

    def __init__(self, url: str, max_key: int) -> None:
        self.conn = psycopg.connect(url, autocommit=True, application_name="probe")
        self.max_key = max_key
        self.phase: str | None = None
        self.latency: dict[str, dict[str, list[float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="probe")

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()

    def _loop(self) -> None:
        rng = random.Random(7)
        while not self._stop.is_set():
            phase = self.phase
            if phase is None:
                time.sleep(0.01)
                continue
            for kind, statement, key in (
                    ("lookup", "SELECT * FROM bench.orders WHERE order_id = %s", rng.randint(1, self.max_key)),
                    ("update", "UPDATE bench.hot SET n = n + 1 WHERE id = %s", rng.randint(1, HOT_ROWS))):
                started = time.perf_counter()
                self.conn.execute(statement, (key,))   # type: ignore[arg-type]
                elapsed = (time.perf_counter() - started) * 1000
                self.latency.setdefault(phase, {}).setdefault(kind, []).append(elapsed)


def percentiles(values: list[float]) -> dict[str, float]:
    if len(values) < 2:
        return {"p50_ms": values[0] if values else float("nan"), "p99_ms": values[0] if values else float("nan"), "n": len(values)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p99_ms": cuts[98], "n": len(values)}


def probe(server_url: str, workdir: Path, rows: int, repeat: int, chunk: int) -> dict[str, Any]:
    clean, incremental = dataset("clean", rows), dataset("incremental", rows)
    out: dict[str, Any] = {}
    for rep in range(repeat):
        for config, extra in configs(chunk).items():
            with fresh_database(server_url, "probe") as url:
                timed_run(spec_file(workdir, clean.path, "", "base"), url)
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute("CREATE TABLE bench.hot (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0)")
                    conn.execute("INSERT INTO bench.hot (id) SELECT generate_series(1, %s)", (HOT_ROWS,))
                settle(url)
                with Probe(url, rows) as p:
                    p.phase = "idle"
                    time.sleep(IDLE_S)
                    p.phase = "load"
                    seconds, report = timed_run(spec_file(workdir, incremental.path, extra, "probe"), url)
                    p.phase = None
                row = out.setdefault(config, {"load_s": [], "idle": {}, "load": {}})
                row["load_s"].append(seconds)
                for phase in ("idle", "load"):
                    for kind, values in p.latency.get(phase, {}).items():
                        row[phase].setdefault(kind, []).extend(values)
                print(f"  [{rep + 1}] {config:<28} load {seconds:7.2f} s  throttled {report.throttled_s}"
                      f"  loadavg {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    return {config: {"load_s": statistics.median(row["load_s"]),
                     **{f"{phase} {kind}": percentiles(values) for phase in ("idle", "load")
                        for kind, values in row[phase].items()}}
            for config, row in out.items()}


def render(results: dict[str, Any]) -> str:
    lines = []
    if "checks" in results:
        m = results["checks"]["medians_s"]
        lines += ["| load | no checks (s) | every check on (s) | ratio |", "|---|---:|---:|---:|"]
        lines += [f"| {step} | {m[f'{step} plain']:.2f} | {m[f'{step} checked']:.2f} | {m[f'{step} ratio']:.3f} |"
                  for step in ("initial", "incremental")]
    if "probe" in results:
        lines += ["", "| configuration | load (s) | lookup p50 / p99 idle (ms) | during load | update p50 / p99 idle (ms)"
                      " | during load |", "|---|---:|---:|---:|---:|---:|"]
        for config, r in results["probe"].items():
            cell = [f"{r[k]['p50_ms']:.2f} / {r[k]['p99_ms']:.2f}" if k in r else "-"
                    for k in ("idle lookup", "load lookup", "idle update", "load update")]
            lines.append(f"| {config} | {r['load_s']:.2f} | " + " | ".join(cell) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.production", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("checks", "probe"))
    parser.add_argument("--chunk", type=int, default=50_000, help="merge_chunk_rows of the chunked probe runs")
    parser.add_argument("--db", help="a server URL (its user must CREATE DATABASE); default: an embedded server")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "production.json")
    args = parser.parse_args(argv)
    workdir = ROOT / "benchmarks" / ".data" / "production"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rows": args.rows, "repeat": args.repeat}
    with (nullcontext(args.db) if args.db else server.embedded()) as url:
        results["facts"] = server.facts(url)
        if args.only in (None, "checks"):
            results["checks"] = checks(url, workdir, args.rows, args.repeat)
        if args.only in (None, "probe"):
            results["probe"] = probe(url, workdir, args.rows, args.repeat, args.chunk)
    print(render(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"raw results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
