"""`python -m benchmarks.peers`: pgstage's peers on the same files, server and run, in one table.

Rounds (--repeat, default 1: the peers are slow) each run everything once; the table shows
medians. Read the ratios to the baselines measured minutes apart, not the absolute seconds. pgstage's `initial` and `incremental` and the `naive`/`bare_sql` baselines run
first, through the main suite's own code; then each installed peer; a peer whose package is
missing is skipped with the command that installs it. Exit 2 when pgstage or a baseline
fails, 1 when pgstage's result differs from bare_sql's (a peer failing is a result, not an error).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import data, scenarios, server
from benchmarks.peers import registry, report, runner

DEFAULT_JSON = Path(__file__).resolve().parents[1] / "results" / "peers.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the clean file (default 1,000,000)")
    parser.add_argument("--peer", action="append", choices=[p.key for p in registry.PEERS],
                        help="run only this peer (repeatable; default: all installed)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the table shows medians (default 1)")
    parser.add_argument("--timeout", type=int, default=300, help="seconds one peer step may take (default 300)")
    parser.add_argument("--sample", type=int, default=50_000, help="rows the executemany peer sends (default 50,000)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"raw results (default {DEFAULT_JSON})")
    parser.add_argument("--db", help="server URL (needs CREATE DATABASE); default: a throwaway embedded server")
    args = parser.parse_args(argv)
    if args.rows < 1000 or args.repeat < 1 or args.sample < 100 or args.timeout < 10:
        parser.error("--rows must be >= 1000, --repeat >= 1, --sample >= 100 and --timeout >= 10")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    chosen = [p for p in registry.PEERS if not args.peer or p.key in args.peer]
    runnable = []
    for peer in chosen:
        why = peer.missing()
        if why:
            print(f"skipping {peer.key}: {why}", file=sys.stderr)
        else:
            runnable.append(peer)
    files = {v: data.dataset(v, args.rows) for v in data.VARIANTS}
    versions = registry.versions()
    code = [server.code_fingerprint()]

    with (contextlib.nullcontext(args.db) if args.db else server.embedded()) as url:
        facts = server.facts(url)
        print(f"machine: {facts['cores_usable']} cores, {facts['memory_gb']} GB RAM, load {facts['load_avg_1m']}, "
              f"{facts['platform']}, Python {facts['python']}; PostgreSQL {facts['postgresql']}")
        print("peers: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        print(f"pgstage source {code[0]}; rows: {args.rows:,}; peers: {', '.join(p.key for p in runnable) or 'none'}", flush=True)
        with tempfile.TemporaryDirectory(prefix="pgstage-peers-") as work:
            bench = scenarios.Bench(url, Path(work), args.rows)
            run = runner.PeerRun(bench, files, args.timeout, min(args.sample, args.rows))
            for rep in range(args.repeat):
                run.round = rep
                try:
                    print(f"round {rep + 1}/{args.repeat}: pgstage and baselines", file=sys.stderr, flush=True)
                    scenarios.run_repeat(bench, {"initial", "incremental"}, rep)
                except scenarios.BenchmarkFailure as exc:
                    print(f"\nBENCHMARK FAILED: {exc}", file=sys.stderr)
                    return 2
                print(f"round {rep + 1}/{args.repeat}: peers", file=sys.stderr, flush=True)
                for peer in runnable:
                    runner.run_peer(run, peer)
        for peer in chosen:
            if peer not in runnable:
                runner.skip(run, peer, list(peer.steps), peer.missing() or "")
        load_end = round(os.getloadavg()[0], 2)
    code.append(server.code_fingerprint())
    if code[0] != code[1]:
        bench.warnings.append(f"the pgstage source changed during the run ({code[0]} -> {code[1]})")

    summary = report.summarize(bench.raw, run.steps)
    loads = [s["load_1m"] for s in run.steps if "load_1m" in s] + [r["load_1m"] for rs in bench.raw.values() for r in rs]
    dirty = files["dirty"]
    print(f"\nfiles: clean {args.rows:,} rows; incremental {files['incremental'].rows:,} rows "
          f"({files['incremental'].expect['updated']:,} newer versions + {files['incremental'].expect['inserted']:,} new keys); "
          f"dirty {dirty.rows:,} rows of which {dirty.expect['rejected']:,} bad")
    print("seconds: (n) = until the step failed, ~ = extrapolated from a sample's rate; "
          "vs bare = vs bare_sql (initial) or bare_sql incremental (incremental); above 1x = slower")
    print(report.table(summary))
    print()
    for line in report.headline(summary):
        print(line)
    if loads:
        print(f"1-minute load average at the measurements: {min(loads):.2f} .. {max(loads):.2f} (end {load_end})")
    return bench.finish(args.json, started, files, {
        "args": {"rows": args.rows, "repeat": args.repeat, "peers": [p.key for p in chosen], "timeout": args.timeout,
                 "sample": run.sample, "db": bool(args.db)},
        "machine": facts, "versions": versions, "pgstage_source": code, "summary": summary,
        "headline": report.headline(summary), "reference": bench.raw, "steps": run.steps})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
