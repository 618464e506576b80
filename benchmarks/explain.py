"""Where pgstage's time goes: `python -m benchmarks.explain [--rows N] [--case initial|incremental]`.

1. A traced run (PGSTAGE_TRACE_SQL=1) in a fresh database, set up as in the benchmark:
   seconds per statement label; what is left is COPY and Python.
2. A second fresh database where the run is killed right after its first batch is validated
   (PGSTAGE_FAULT=validate.after:1), which leaves that batch's staging and `_chk_` tables
   in place. The batch's validation statement (under a new table name) and its merge
   statement (taken from the traced run, pointed at the surviving `_chk_` table) are then
   run under EXPLAIN (ANALYZE, BUFFERS) inside a transaction that is rolled back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import psycopg

from benchmarks import scenarios, server

_TIMING = re.compile(r"^-- (.*): ([0-9.]+)s, (-?\d+) rows(, ended at [0-9.]+s \[.*\])?$")
_CHK = re.compile(r'"pgstage"\."(_chk_\d+_\d+_\d+)"')


def statements(trace: str) -> list[tuple[str, str, float]]:
    """(label, SQL, seconds) of every statement in a PGSTAGE_TRACE_SQL stderr."""
    out: list[tuple[str, str, float]] = []
    label: str | None = None
    body: list[str] = []
    for line in trace.splitlines():
        timing = _TIMING.match(line)
        if timing and label is not None and label == timing.group(1):
            out.append((label, "\n".join(body).rstrip().rstrip(";"), float(timing.group(2))))
            label, body = None, []
        elif line.startswith("-- ") and not timing:
            label, body = line[3:], []
        elif label is not None:
            body.append(line)
    return out


def breakdown(stmts: list[tuple[str, str, float]], total: float) -> str:
    by_label: dict[str, list[float]] = defaultdict(list)
    for label, _, seconds in stmts:
        by_label[re.sub(r" /.*$", "", label)].append(seconds)
    rows = sorted(by_label.items(), key=lambda kv: -sum(kv[1]))
    lines = [f"{'statement label':<40} {'n':>4} {'seconds':>9} {'share':>7}"]
    for label, times in rows:
        if sum(times) >= 0.005:
            lines.append(f"{label:<40} {len(times):>4} {sum(times):>9.3f} {sum(times) / total:>7.1%}")
    traced = sum(t for _, _, t in stmts)
    lines.append(f"{'(untraced: COPY, file hashing, Python)':<40} {'':>4} {total - traced:>9.3f} {(total - traced) / total:>7.1%}")
    lines.append(f"{'total':<40} {'':>4} {total:>9.3f}")
    return "\n".join(lines)


def _faulted_run(bench: scenarios.Bench, url: str, spec: Path) -> str:
    """Run pgstage until its first batch is validated, then SIGKILL it; returns its trace."""
    env = {**os.environ, "PGSTAGE_TRACE_SQL": "1", "PGSTAGE_FAULT": "validate.after:1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks._child",
                           json.dumps({"kind": "pgstage", "spec": str(spec), "db": url})],
                          cwd=scenarios.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != -9:
        raise RuntimeError(f"expected the run to be killed at validate.after, got exit {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stderr


def _explain(url: str, statement: str, before: tuple[str, ...] = ()) -> str:
    with psycopg.connect(url) as conn:  # not autocommit: everything below is rolled back
        conn.execute("SET TIME ZONE 'UTC'")
        for s in before:
            conn.execute(s)  # type: ignore[arg-type]
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, VERBOSE OFF) {statement}").fetchall()  # type: ignore[arg-type]
        conn.rollback()
    return "\n".join(r[0] for r in rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--case", choices=("initial", "incremental"), default="initial")
    parser.add_argument("--db", help="server URL; default: a throwaway embedded server")
    parser.add_argument("--save", type=Path, help="also write the traced statements and plans to this file")
    args = parser.parse_args(argv)

    with (contextlib.nullcontext(args.db) if args.db else server.embedded()) as url, \
            tempfile.TemporaryDirectory(prefix="pgstage-explain-") as work:
        bench = scenarios.Bench(url, Path(work), args.rows, trace=True)
        clean = bench.data("clean")
        data = bench.data(args.case if args.case == "incremental" else "clean")
        spec = bench.spec(data.path)

        def prepared(db_url: str) -> None:
            scenarios.prepare_pgstage_target(bench, db_url)
            if args.case == "incremental":
                bench.trace = False
                bench.child({"kind": "pgstage", "spec": str(bench.spec(clean.path)), "db": db_url})
                bench.trace = True
            scenarios.settle(db_url)

        with bench.database("trace") as db_url:
            prepared(db_url)
            result = bench.child({"kind": "pgstage", "spec": str(spec), "db": db_url})
        stmts = statements(result.pop("trace"))
        print(f"# {args.case}: {data.rows:,} rows, pgstage {result['seconds']:.2f}s, counts {json.dumps(result['counts'])}\n")
        print(breakdown(stmts, result["seconds"]))
        merge_sql = next(s for label, s, _ in stmts if label.startswith("merge "))

        with bench.database("explain") as db_url:
            prepared(db_url)
            faulted = statements(_faulted_run(bench, db_url, spec))
            check_sql = next(s for label, s, _ in faulted if label.startswith("validate ") and "CREATE" in s)
            chk_table = _CHK.search(check_sql)
            run_id = re.search(r"_chk_(\d+)_", check_sql)
            assert chk_table and run_id, check_sql[:200]
            explain_check = _CHK.sub('"pgstage"."_chk_explain"', check_sql, count=1)
            merge = _CHK.sub(f'"pgstage"."{chk_table.group(1)}"', merge_sql).replace("%(run_id)s", run_id.group(1))
            # pgstage drops the secondary index around a load this large against an empty target (index_strategy auto)
            drop = ("DROP INDEX bench.orders_updated_at",) if args.case == "initial" else ()
            plans = {"validate": _explain(db_url, explain_check), "merge": _explain(db_url, merge, drop)}
        for name, plan in plans.items():
            print(f"\n# EXPLAIN ANALYZE: {name} (first batch){' after DROP INDEX' if name == 'merge' and drop else ''}\n{plan}")
        if args.save:
            args.save.write_text(json.dumps({"statements": stmts, "validate_sql": explain_check, "merge_sql": merge,
                                             "plans": plans}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
