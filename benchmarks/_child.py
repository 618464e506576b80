"""One timed load in a fresh process: `python -m benchmarks._child '<job json>'`.

A separate process per measurement gives each load its own peak RSS (ru_maxrss never goes
down, so it cannot be measured twice in one process) and keeps pgstage's imports, caches
and connections from leaking between measurements. The clock starts after the imports.
Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any


def _pgstage(job: dict[str, Any]) -> dict[str, Any]:
    import pgstage
    import pgstage.run  # noqa: F401  (pgstage imports each name at first use: the pipeline's imports before the clock)

    started = time.perf_counter()
    report = pgstage.run(job["spec"], db=job["db"], force=job.get("force", False), dry_run=job.get("dry_run", False),
                         partition=job.get("partition"), as_of=job.get("as_of"))
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": report.status, "counts": report.counts.as_dict(),
            "duration_s": report.duration_s, "rejects_by_rule": dict(report.rejects_by_rule),
            "files": [{"path": f.path, "status": f.status, "counts": f.counts.as_dict()} for f in report.files]}


def _backfill(job: dict[str, Any]) -> dict[str, Any]:
    import pgstage
    import pgstage.backfill  # noqa: F401  (likewise)
    import pgstage.run  # noqa: F401

    started = time.perf_counter()
    report = pgstage.backfill([job["spec"]], start=job["start"], end=job["end"], jobs=job.get("jobs", 1), db=job["db"])
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "status": "failed" if report.failed else "succeeded", "counts": report.counts.as_dict(),
            "units": report.units, "unit_seconds": report.unit_seconds}


def _baseline(job: dict[str, Any]) -> dict[str, Any]:
    import psycopg

    from benchmarks import baselines, orders9, strategies

    load = {"naive": baselines.load_naive, "bare_sql": baselines.load_bare_sql,
            "naive9": orders9.load_naive, "bare_sql9": orders9.load_bare_sql,
            "bare_replace_day": strategies.load_replace_day, "bare_scd2": strategies.load_scd2,
            "bare_scd2_constrained": strategies.load_scd2}[job["kind"]]
    started = time.perf_counter()
    with psycopg.connect(job["db"], autocommit=True) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        counts = load(conn, Path(job["file"]))
    return {"seconds": time.perf_counter() - started, "status": "succeeded", "counts": counts}


def main(argv: list[str]) -> None:
    job = json.loads(argv[1])
    result = {"pgstage": _pgstage, "backfill": _backfill}.get(job["kind"], _baseline)(job)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["maxrss_kb"] = usage.ru_maxrss  # KiB on Linux
    result["cpu_s"] = usage.ru_utime + usage.ru_stime   # the client's CPU, every thread, imports included
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv)
