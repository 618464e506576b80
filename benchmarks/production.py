"""Production-safety benchmarks (docs/production.md): what the throttle's checks cost, and what a
load does to a live workload's latency with and without bounded merge transactions.

```
python -m benchmarks.production                                  # 2M rows, 3 rounds of each part
python -m benchmarks.production --rows 20000 --repeat 1 --chunk 2000 --idle 2   # does it work (~1 min)
python -m benchmarks.production --only checks --repeat 5
python -m benchmarks.production --only probe --repeat 1 --json a.json   # one round; several such files:
python -m benchmarks.production --combine a.json b.json c.json          # pooled table
```

1. `checks`: the initial load (clean file of --rows rows into an empty target) and the
   incremental load onto it (10% of the keys newer, 5% new: `benchmarks.data`), each timed
   with no throttle settings and with every check enabled at limits that never trigger
   (`max_replica_lag`, `max_replica_lag_bytes`, `max_active_sessions`, `throttle_query`),
   in the same run, alternating which goes first each round. The cost is the ratio of
   medians, and the ratio of each round's pair (the spread). On a shared machine single
   loads vary by more than 2%, so each checked load also counts its throttle checks and times
   them inside the load (the time spent in `Throttle.pressures`, whose queries are the whole
   of the checks' own work): a deterministic count and a small, directly measured time,
   reported as a share of the load's seconds. What this share leaves out, the ratio sees: with
   any throttle setting, batches merge one at a time (pgstage/run/state.py `one_merge_at_a_time`).
2. `probe`: an incremental load of --rows rows (every other key of a clean --rows-row table
   newer, then as many new keys: half updates, half inserts, `live_lines`) onto that table,
   while a separate process (`benchmarks/_probe.py`) runs paced primary-key lookups, updates of
   rows the load does not write (`update_disjoint`) and updates of rows it rewrites
   (`update_overlap`), one session each. The table is loaded once into a template database
   and cloned (`CREATE DATABASE … TEMPLATE`) for each configuration, so every configuration
   starts from the same bytes. Per configuration: --idle seconds of probing with the server
   idle, then the load. Configurations: one transaction per batch (the default),
   `merge_chunk_rows = --chunk`, every throttle check (never triggering) without chunks, and
   both; their order rotates each round. p50/p99/max in milliseconds per phase and kind, the
   load's WAL bytes and checkpoints. Goal: with chunks, the probe's p99 within 2× of idle.

Every load runs in this process against a database of one server (an embedded one, initdb
defaults, unless --db); the machine's 1-minute load average is recorded with each number,
because on a shared machine the numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
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
from benchmarks import _probe, server
from benchmarks.data import DATA_DIR, FIRST_KEY, GEN_VERSION, _fields, _line, _write, dataset
from benchmarks.scenarios import PIPELINE, SPEC
from pgstage.throttle import Pressure, Throttle

ROOT = Path(__file__).resolve().parent.parent
NEVER = ('max_replica_lag = "1h"\nmax_replica_lag_bytes = "1TB"\nmax_active_sessions = 100000\n'
         'throttle_query = "select false"\n')
CONFIGS = ("single", "chunks", "checks", "chunks+checks")


def config_extra(config: str, chunk: int) -> str:
    return ((f"merge_chunk_rows = {chunk}\n" if "chunks" in config else "")
            + (NEVER if "checks" in config else ""))


def config_label(config: str, chunk: int) -> str:
    return {"single": "one transaction per batch", "chunks": f"merge_chunk_rows = {chunk:,}",
            "checks": "throttle checks, no chunks", "chunks+checks": f"merge_chunk_rows = {chunk:,} + checks"}[config]


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def spec_file(workdir: Path, path: Path, extra: str, tag: str) -> Path:
    out = workdir / f"spec-{tag}-{path.stem}.toml"
    out.write_text(SPEC.format(pipeline=PIPELINE, path=json.dumps(str(path))) + extra, encoding="utf-8")
    return out


def create_database(server_url: str, name: str, template: str | None = None) -> str:
    with psycopg.connect(server_url, autocommit=True) as conn:
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        else:   # FILE_COPY: copies the files (and checkpoints), much faster than WAL_LOG for a big table
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                sql.Identifier(name), sql.Identifier(template)))
    return make_conninfo(server_url, dbname=name)


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextmanager
def fresh_database(server_url: str, label: str, template: str | None = None) -> Iterator[str]:
    name = f"bench_prod_{os.getpid()}_{label}_{time.monotonic_ns()}"
    url = create_database(server_url, name, template)
    try:
        yield url
    finally:
        drop_database(server_url, name)


def timed_run(spec: Path, url: str) -> tuple[float, pgstage.RunReport]:
    started = time.perf_counter()
    report = pgstage.run(spec, db=url)
    seconds = time.perf_counter() - started
    if report.status != "succeeded":
        raise SystemExit(f"{spec.name}: {report.status}: {report.message}")
    return seconds, report


def expect(report: pgstage.RunReport, **counts: int) -> None:
    """The numbers of a load whose counts are not what its file holds cannot be trusted."""
    got = report.counts.as_dict()
    wrong = {k: (got.get(k), v) for k, v in counts.items() if got.get(k) != v}
    if wrong:
        raise SystemExit(f"unexpected counts (got, expected): {wrong}")


def settle(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('bench.orders')").fetchone() != (None,):
            conn.execute("VACUUM (ANALYZE) bench.orders")
        conn.execute("CHECKPOINT")


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


# --- 1. the checks' cost --------------------------------------------------------------------------

class CheckMeter:
    """Counts and times the throttle's checks (`Throttle.pressures`) of the loads run inside it.

    Instrumentation of this benchmark process only: the checks still run their real queries
    against the real server; only their count and wall time are recorded around them.
    """

    def __init__(self) -> None:
        self.rounds, self.seconds = 0, 0.0

    @contextmanager
    def installed(self) -> Iterator["CheckMeter"]:
        original = Throttle.pressures

        def timed(throttle: Throttle, conn: psycopg.Connection[Any], *, paused: bool) -> list[Pressure]:
            started = time.perf_counter()
            try:
                return original(throttle, conn, paused=paused)
            finally:
                self.rounds += 1
                self.seconds += time.perf_counter() - started

        Throttle.pressures = timed   # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            Throttle.pressures = original   # type: ignore[method-assign]


# Statements of one check round with NEVER: replicas, active sessions, and the throttle_query's
# BEGIN, SET TRANSACTION READ ONLY, SET LOCAL statement_timeout, the query, COMMIT.
STATEMENTS_PER_CHECK = 7


def checks(server_url: str, workdir: Path, rows: int, repeat: int) -> dict[str, Any]:
    clean, incremental = dataset("clean", rows), dataset("incremental", rows)
    times: dict[str, list[float]] = {f"{step} {mode}": [] for step in ("initial", "incremental")
                                     for mode in ("plain", "checked")}
    meters: dict[str, list[dict[str, float]]] = {"initial": [], "incremental": []}
    loads: list[float] = []
    for rep in range(repeat):
        modes = ("plain", "checked") if rep % 2 == 0 else ("checked", "plain")
        for mode in modes:
            extra = NEVER if mode == "checked" else ""
            with fresh_database(server_url, mode) as url:
                for step, data in (("initial", clean), ("incremental", incremental)):
                    settle(url)
                    meter = CheckMeter()
                    with meter.installed():
                        seconds, report = timed_run(spec_file(workdir, data.path, extra, mode), url)
                    expect(report, **data.expect)
                    times[f"{step} {mode}"].append(seconds)
                    loads.append(load_avg())
                    if mode == "checked":
                        meters[step].append({"checks": meter.rounds, "check_s": meter.seconds, "load_s": seconds,
                                             "share": meter.seconds / seconds})
                    print(f"  [{rep + 1}] {step:<12} {mode:<8} {seconds:8.2f} s  checks {meter.rounds:3d}"
                          f" ({meter.seconds * 1000:.0f} ms)  load {loads[-1]}", file=sys.stderr, flush=True)
    return summarize_checks(times, meters, loads)


def summarize_checks(times: dict[str, list[float]], meters: dict[str, list[dict[str, float]]],
                     loads: list[float]) -> dict[str, Any]:
    result: dict[str, Any] = {name: statistics.median(v) for name, v in times.items()}
    pairs: dict[str, Any] = {}
    for step in ("initial", "incremental"):
        result[f"{step} ratio"] = result[f"{step} checked"] / result[f"{step} plain"]
        paired = [c / p for c, p in zip(times[f"{step} checked"], times[f"{step} plain"], strict=True)]
        plain = times[f"{step} plain"]
        pairs[step] = {"paired_ratio": spread(paired), "plain_s": spread(plain),
                       "plain_spread": (max(plain) - min(plain)) / statistics.median(plain),
                       "checks": spread([m["checks"] for m in meters[step]]),
                       "check_s": spread([m["check_s"] for m in meters[step]]),
                       "check_share": spread([m["share"] for m in meters[step]])}
    return {"medians_s": result, "raw_s": times, "rounds": pairs, "meters": meters,
            "statements_per_check": STATEMENTS_PER_CHECK, "load_avg": spread(loads), "loads": loads}


# --- 2. the live-workload probe -------------------------------------------------------------------------

def live_lines(rows: int, seed: int) -> Iterator[str]:
    """Every key of even index again with a newer version, then rows // 2 new keys (probe's load)."""
    yield from (_line(_fields(i, seed, revised=True)) for i in range(0, rows, 2))
    yield from (_line(_fields(i, seed, revised=False)) for i in range(rows, rows + rows // 2))


def live_dataset(rows: int, seed: int = 42) -> tuple[Path, dict[str, int]]:
    path = DATA_DIR / f"orders-live-{rows}-s{seed}-v{GEN_VERSION}.csv"
    if not path.exists():
        DATA_DIR.mkdir(parents=True, exist_ok=True)
        _write(path, live_lines(rows, seed))
    updates, new = len(range(0, rows, 2)), rows // 2
    return path, {"read": updates + new, "rejected": 0, "updated": updates, "inserted": new}


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan"), "n": 0}
    if len(values) < 2:
        return {"p50_ms": values[0], "p99_ms": values[0], "max_ms": values[0], "n": 1}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cuts[49], "p99_ms": cuts[98], "max_ms": max(values), "n": len(values)}


def open_loop(values: list[float], interval_ms: float) -> list[float]:
    """The samples an application issuing a statement every `interval_ms` would have seen.

    The probe is a closed loop: a statement blocked for 2 s is one sample, where a real
    workload keeps arriving and has ~2 s / interval statements waiting behind it (coordinated
    omission). Each long sample adds those missing ones, each waiting `interval_ms` less than
    the one before (HdrHistogram's correction for an expected interval).
    """
    out = list(values)
    for v in values:
        missing = v - interval_ms
        while missing >= interval_ms:
            out.append(missing)
            missing -= interval_ms
    return out


def server_counters(url: str) -> tuple[int, int]:
    """WAL position (bytes) and checkpoints started so far (timed + requested)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
                           " (SELECT num_timed + num_requested FROM pg_stat_checkpointer)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@contextmanager
def probing(url: str, rows: int, interval_s: float) -> Iterator[dict[str, list[tuple[float, float]]]]:
    """The probe process for the duration of the block; its samples fill the yielded dict on exit."""
    ctx = multiprocessing.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_probe.run, args=(url, FIRST_KEY, rows, interval_s, ready, stop, send), name="probe")
    process.start()
    samples: dict[str, list[tuple[float, float]]] = {}
    try:
        if not ready.wait(60):
            raise SystemExit("the probe process did not start")
        yield samples
    finally:
        stop.set()
        if receive.poll(120):
            samples.update(receive.recv())
        process.join(30)
        if process.is_alive():
            process.kill()


def in_window(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [ms for started, ms in samples if start <= started < end]


def make_template(server_url: str, workdir: Path, rows: int) -> str:
    """The clean --rows-row table, loaded once, vacuumed: every probe configuration clones it."""
    name = f"bench_prod_base_{os.getpid()}"
    url = create_database(server_url, name)
    clean = dataset("clean", rows)
    seconds, report = timed_run(spec_file(workdir, clean.path, "", "base"), url)
    expect(report, **clean.expect)
    settle(url)
    print(f"  template: {rows:,} rows loaded in {seconds:.1f} s", file=sys.stderr, flush=True)
    return name


def probe(server_url: str, workdir: Path, rows: int, repeat: int, chunk: int, configs: tuple[str, ...],
          idle_s: float, interval_s: float) -> dict[str, Any]:
    path, counts = live_dataset(rows)
    template = make_template(server_url, workdir, rows)
    out: dict[str, Any] = {}
    try:
        for rep in range(repeat):
            order = configs[rep % len(configs):] + configs[:rep % len(configs)]
            for config in order:
                with fresh_database(server_url, "probe", template) as url:
                    settle(url)
                    wal0, ckpt0 = server_counters(url)
                    with probing(url, rows, interval_s) as samples:
                        idle_start = time.monotonic()
                        time.sleep(idle_s)
                        load_start = time.monotonic()
                        idle_load = load_avg()
                        seconds, report = timed_run(spec_file(workdir, path, config_extra(config, chunk), "probe"), url)
                        load_end = time.monotonic()
                        during = load_avg()
                    expect(report, **counts)
                    wal1, ckpt1 = server_counters(url)
                row = out.setdefault(config, {"load_s": [], "wal_bytes": [], "checkpoints": [], "load_avg": [],
                                              "throttled_s": [], "idle": {}, "load": {}})
                row["load_s"].append(seconds)
                row["wal_bytes"].append(wal1 - wal0)
                row["checkpoints"].append(ckpt1 - ckpt0)
                row["load_avg"].append([idle_load, during])
                row["throttled_s"].append(report.throttled_s)
                for kind, values in samples.items():
                    row["idle"].setdefault(kind, []).extend(round(v, 3) for v in in_window(values, idle_start,
                                                                                           load_start))
                    row["load"].setdefault(kind, []).extend(round(v, 3) for v in in_window(values, load_start,
                                                                                           load_end))
                print(f"  [{rep + 1}] {config_label(config, chunk):<32} load {seconds:7.2f} s"
                      f"  WAL {(wal1 - wal0) / 2**20:,.0f} MB  checkpoints {ckpt1 - ckpt0}"
                      f"  overlap p99 {percentiles(in_window(samples.get('update_overlap', []), load_start, load_end))['p99_ms']:.0f} ms"
                      f"  loadavg {idle_load} / {during}", file=sys.stderr, flush=True)
    finally:
        drop_database(server_url, template)
    return {"chunk": chunk, "idle_s": idle_s, "interval_s": interval_s, "raw": out}


def summarize_probe(raw: dict[str, Any], interval_ms: float) -> dict[str, Any]:
    return {config: {"load_s": statistics.median(row["load_s"]), "rounds": len(row["load_s"]),
                     "wal_mb": statistics.median(row["wal_bytes"]) / 2**20,
                     "checkpoints": statistics.median(row["checkpoints"]),
                     **{f"{phase} {kind}": percentiles(values) for phase in ("idle", "load")
                        for kind, values in row[phase].items()},
                     **{f"{phase} {kind} open loop": percentiles(open_loop(values, interval_ms))
                        for phase in ("idle", "load") for kind, values in row[phase].items()}}
            for config, row in raw.items()}


def combine(paths: list[Path]) -> dict[str, Any]:
    """Pool several runs' JSON (e.g. one round each, under the benchmark lock one at a time)."""
    pooled: dict[str, Any] = {"combined": [str(p) for p in paths]}
    for path in paths:
        part = json.loads(path.read_text(encoding="utf-8"))
        pooled.setdefault("rows", part["rows"])
        if part["rows"] != pooled["rows"]:
            raise SystemExit(f"{path}: {part['rows']} rows, not {pooled['rows']}: not the same measurement")
        pooled.setdefault("facts", part.get("facts"))
        if "checks" in part:
            raw = pooled.setdefault("checks_raw", {"times": {}, "meters": {}, "loads": []})
            for name, values in part["checks"]["raw_s"].items():
                raw["times"].setdefault(name, []).extend(values)
            for step, values in part["checks"]["meters"].items():
                raw["meters"].setdefault(step, []).extend(values)
            raw["loads"].extend(part["checks"]["loads"])
        if "probe" in part:
            into = pooled.setdefault("probe", {**part["probe"], "raw": {}})
            for config, row in part["probe"]["raw"].items():
                mine = into["raw"].setdefault(config, {k: [] if isinstance(v, list) else {} for k, v in row.items()})
                for key, value in row.items():
                    if isinstance(value, list):
                        mine[key].extend(value)
                    else:
                        for kind, values in value.items():
                            mine[key].setdefault(kind, []).extend(values)
    if "checks_raw" in pooled:
        raw = pooled.pop("checks_raw")
        pooled["checks"] = summarize_checks(raw["times"], raw["meters"], raw["loads"])
    return pooled


def render(results: dict[str, Any]) -> str:
    lines = []
    if "checks" in results:
        c = results["checks"]
        m = c["medians_s"]
        lines += ["| load | no checks (s) | every check on (s) | ratio of medians | paired ratios (min–max)"
                  " | checks per load | their time (ms) | share of the load |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for step in ("initial", "incremental"):
            r = c["rounds"][step]
            lines.append(f"| {step} | {m[f'{step} plain']:.2f} | {m[f'{step} checked']:.2f} | {m[f'{step} ratio']:.3f}"
                         f" | {r['paired_ratio']['min']:.3f}–{r['paired_ratio']['max']:.3f}"
                         f" | {r['checks']['median']:.0f} | {r['check_s']['median'] * 1000:.1f}"
                         f" | {r['check_share']['median']:.3%} |")
    if "probe" in results:
        chunk = results["probe"]["chunk"]
        summary = summarize_probe(results["probe"]["raw"], results["probe"]["interval_s"] * 1000)
        kinds = ("lookup", "update_disjoint", "update_overlap")
        for title, suffix in (("as sampled (closed loop)", ""), ("open loop (coordinated omission corrected)",
                                                                    " open loop")):
            lines += ["", f"probe latency {title}; p99 × = p99 during the load / p99 idle",
                      "", "| configuration | load (s) | WAL (MB) | " + " | ".join(
                          f"{k} p50 / p99 idle (ms) | during load | p99 × | max (ms)" for k in kinds) + " |",
                      "|---|---:|---:|" + "---:|---:|---:|---:|" * len(kinds)]
            for config, r in summary.items():
                cells = []
                for kind in kinds:
                    idle, load = r.get(f"idle {kind}{suffix}"), r.get(f"load {kind}{suffix}")
                    cells += [f"{idle['p50_ms']:.2f} / {idle['p99_ms']:.2f}" if idle else "-",
                              f"{load['p50_ms']:.2f} / {load['p99_ms']:.2f}" if load else "-",
                              f"{load['p99_ms'] / idle['p99_ms']:.1f}" if idle and load else "-",
                              f"{load['max_ms']:,.0f}" if load else "-"]
                lines.append(f"| {config_label(config, chunk)} | {r['load_s']:.2f} | {r['wal_mb']:,.0f} | "
                             + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.production", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=("checks", "probe"))
    parser.add_argument("--chunk", type=int, default=50_000, help="merge_chunk_rows of the chunked probe runs")
    parser.add_argument("--config", action="append", choices=CONFIGS, help="probe only these (repeatable)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of probing before each load")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="pause between a probe session's statements")
    parser.add_argument("--db", help="a server URL (its user must CREATE DATABASE); default: an embedded server")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "production.json")
    parser.add_argument("--combine", type=Path, nargs="+", help="pool these result files and print the table")
    args = parser.parse_args(argv)
    if args.combine:
        pooled = combine(args.combine)
        print(render(pooled))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(pooled, default=str) + "\n", encoding="utf-8")
        print(f"pooled results in {args.json}")
        return 0
    workdir = DATA_DIR / "production"
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"rows": args.rows, "repeat": args.repeat, "load_avg_start": load_avg()}
    with (nullcontext(args.db) if args.db else server.embedded()) as url:
        results["facts"] = server.facts(url)
        results["code"] = server.code_fingerprint()
        if args.only in (None, "checks"):
            results["checks"] = checks(url, workdir, args.rows, args.repeat)
        if args.only in (None, "probe"):
            results["probe"] = probe(url, workdir, args.rows, args.repeat, args.chunk, tuple(args.config or CONFIGS),
                                     args.idle, args.interval_ms / 1000)
    results["load_avg_end"] = load_avg()
    print(render(results))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, default=str) + "\n", encoding="utf-8")
    print(f"raw results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
