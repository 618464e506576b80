"""`python -m benchmarks`: time pgstage against hand-written loads and print one table.

Medians over --repeat rounds (the machine is noisy: read the ratios, not the absolute
seconds); every raw timing goes to the JSON file. Exit 2 when a load fails or its counts do
not balance, 1 when a result differs from what the generated data says it must be.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import data, data9, orders9, scenarios, server, strategies

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"
BASELINES = ("naive", "bare_sql", "bare_sql_incremental", *strategies.BASELINES, *orders9.BASELINES)
SCENARIOS = (*scenarios.SCENARIOS, *strategies.SCENARIOS, *orders9.SCENARIOS)
# scenario -> [(measurement it is compared with, how the table names it)]
RATIOS: dict[str, list[tuple[str, str]]] = {
    "initial": [("naive", "naive"), ("bare_sql", "bare_sql")],
    "incremental": [("bare_sql_incremental", "bare_sql incremental")],
    "noop": [("initial", "pgstage initial")],
    "forced_noop": [("initial", "pgstage initial")],
    "dirty": [("initial", "pgstage initial")],
    "dry_run": [("initial", "pgstage initial")],
    **strategies.RATIOS,
    "backfill": [("initial", "pgstage initial (one file, same rows)")],
    "noop_shell": [("noop", "pgstage noop in-process")],
    **orders9.RATIOS,
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows in the clean file (default 2,000,000)")
    parser.add_argument("--scenario", action="append", choices=SCENARIOS,
                        help="run only this scenario (repeatable; default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows medians (default 3)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"raw results (default {DEFAULT_JSON})")
    parser.add_argument("--db", help="server URL (needs CREATE DATABASE); default: a throwaway embedded server")
    parser.add_argument("--trace", action="store_true", help="keep pgstage's PGSTAGE_TRACE_SQL output in the JSON")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false",
                        help="time pgstage only (no naive/bare_sql, so no ratios to them): e.g. a memory check at 10M rows")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.repeat < 1:
        parser.error("--rows must be >= 1000 and --repeat >= 1")
    return args


def summarize(raw: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per measurement (and one more per extra baseline): medians, throughput, peak RSS, ratios."""
    median = {name: statistics.median(r["seconds"] for r in runs) for name, runs in raw.items()}
    out = []
    for name in (*BASELINES, *SCENARIOS, *scenarios.EXTRA, *orders9.EXTRA):
        if name not in raw:
            continue
        runs = raw[name]
        rows = runs[0]["rows"]
        base = {"scenario": name, "seconds": median[name],
                "seconds_all": [r["seconds"] for r in runs],
                "rows": rows, "rows_per_s": None if name in ("noop", "noop_shell") or not rows else rows / median[name],
                "wall_s": statistics.median(r.get("wall_s", r["seconds"]) for r in runs),
                "peak_rss_mb": max(r["maxrss_kb"] for r in runs) / 1024, "ratio": None, "vs": None}
        compared = [(ref, label) for ref, label in RATIOS.get(name, []) if ref in median]
        if not compared:
            out.append(base)
        for i, (ref, label) in enumerate(compared):
            out.append({**base, "ratio": median[name] / median[ref], "vs": label, "continued": i > 0})
    return out


def table(summary: list[dict[str, Any]]) -> str:
    lines = [f"{'scenario':<28} {'seconds':>9} {'shell s':>8} {'rows/s':>11} {'peak RSS MB':>12} {'ratio':>8}  vs",
             "-" * 86]
    for row in summary:
        if row.get("continued"):
            lines.append(f"{'':<28} {'':>9} {'':>8} {'':>11} {'':>12} {row['ratio']:>7.2f}x  {row['vs']}")
            continue
        rate = f"{row['rows_per_s']:,.0f}" if row["rows_per_s"] else "-"
        ratio = f"{row['ratio']:>7.2f}x" if row["ratio"] is not None else f"{'-':>8}"
        lines.append(f"{row['scenario']:<28} {row['seconds']:>9.2f} {row['wall_s']:>8.2f} {rate:>11} {row['peak_rss_mb']:>12.0f} "
                     f"{ratio}  {row['vs'] or ''}")
    return "\n".join(lines)


def counts_table(raw: dict[str, list[dict[str, Any]]]) -> str:
    keys = ("read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale", "deleted")
    lines = [f"{'pgstage counts (last round)':<28}" + "".join(f"{k:>11}" for k in keys) + "  status"]
    for name in (*SCENARIOS, *orders9.EXTRA):
        if name in raw:
            r = raw[name][-1]
            lines.append(f"{name:<28}" + "".join(f"{r['counts'][k]:>11,}" for k in keys) + f"  {r['status']}")
            if r.get("rejects_by_rule"):
                lines.append(f"{'':<28}rejects by rule: {json.dumps(r['rejects_by_rule'])}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    selected = set(args.scenario or SCENARIOS)
    started = time.perf_counter()
    t = time.perf_counter()
    variants = (["clean"] if selected & set(scenarios.SCENARIOS) else []) + (["incremental"] if "incremental" in selected else []) + (["dirty"] if "dirty" in selected else [])
    files = {v: data.dataset(v, args.rows) for v in variants}
    if "orders9" in selected:
        files.update({f"orders9 {v}": data9.dataset(v, args.rows) for v in data9.VARIANTS})
    print(f"data ready in {time.perf_counter() - t:.1f}s: " + ", ".join(
        f"{v} {d.rows:,} rows {d.size_bytes / 2**20:.0f} MB" for v, d in files.items()), file=sys.stderr)

    with (contextlib.nullcontext(args.db) if args.db else server.embedded()) as url:
        facts = server.facts(url)
        print(f"machine: {facts['cores_usable']} cores ({facts['cores_logical']} logical), {facts['memory_gb']} GB RAM, "
              f"load {facts['load_avg_1m']}, {facts['platform']}, Python {facts['python']}")
        print(f"PostgreSQL {facts['postgresql']} ({'--db' if args.db else 'embedded, initdb defaults'}): "
              + ", ".join(f"{k}={v}" for k, v in facts["settings"].items()))
        print(f"rows: {args.rows:,}, repeat: {args.repeat}, scenarios: {', '.join(s for s in SCENARIOS if s in selected)}",
              flush=True)
        with tempfile.TemporaryDirectory(prefix="pgstage-bench-specs-") as work:
            bench = scenarios.Bench(url, Path(work), args.rows, trace=args.trace, baselines=args.baselines)
            code = [server.code_fingerprint()]
            try:
                for rep in range(args.repeat):
                    print(f"round {rep + 1}/{args.repeat} (pgstage source {code[-1]})", file=sys.stderr, flush=True)
                    scenarios.run_repeat(bench, selected, rep)
                    strategies.run_repeat(bench, selected, rep)
                    orders9.run_repeat(bench, selected, rep)
                    code.append(server.code_fingerprint())
                    if code[-1] != code[-2]:
                        bench.warnings.append(f"the pgstage source changed during round {rep + 1} "
                                              f"({code[-2]} -> {code[-1]}): the rounds timed different code")
            except scenarios.BenchmarkFailure as exc:
                print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
                return 2

    summary = summarize(bench.raw)
    print()
    print(table(summary))
    print()
    print(counts_table(bench.raw))
    return bench.finish(args.json, started, files, {
        "args": {"rows": args.rows, "repeat": args.repeat, "scenarios": sorted(selected), "db": bool(args.db)},
        "machine": facts, "pgstage_source": code, "summary": summary, "raw": bench.raw, "checksums": bench.checksums})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
