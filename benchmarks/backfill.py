"""The `backfill` scenario: what a unit costs when a backfill runs many of them, and what the shell adds.

* `backfill`: the clean file cut into 365 daily files (the same rows, one header each), loaded
  by `pgstage.backfill` with `--jobs 2` (JOBS) into the empty indexed target; compared with the
  single file's `initial`, which uses `load.workers = 2`: two sessions each. One spec, so the two
  jobs share its days: the next day stages and validates while the day before merges
  (pgstage/backfill/turns.py). The issue's target: ≥ 0.8× its records/s (a ratio of seconds ≤ 1.25).
* `backfill_empty`: 365 header-only daily files, on the same two jobs: the fixed cost of a unit
  inside a backfill is its seconds / 365 (target ≤ 50 ms).
* `noop_shell`: `pgstage run SPEC` of the already loaded clean file from the shell (a fresh
  interpreter, the CLI's imports, the run, the rendering), beside the in-process `noop`;
  `startup` is `python -c "import pgstage.cli"` and `python_bare` is `python -c pass`, so
  the difference splits into interpreter start, imports and the run itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.data import Dataset
    from benchmarks.scenarios import Bench

DAYS = 365
START = date(2023, 1, 1)
JOBS = 2        # as many as `initial`'s load.workers: a fair comparison


def daily_files(clean: Dataset, folder: Path, *, empty: bool = False) -> tuple[date, date]:
    """The clean file's records in DAYS consecutive chunks, one file a day (header-only files when empty)."""
    folder.mkdir(parents=True, exist_ok=True)
    per_day = -(-clean.rows // DAYS)
    with clean.path.open("rb") as source:
        header = source.readline()
        for i in range(DAYS):
            with (folder / f"orders_{START + timedelta(days=i)}.csv").open("wb") as out:
                out.write(header)
                if not empty:
                    for _ in range(per_day):
                        line = source.readline()
                        if not line:
                            break
                        out.write(line)
    return START, START + timedelta(days=DAYS - 1)


def _job(bench: Bench, folder: Path, url: str) -> dict[str, Any]:
    first, last = START, START + timedelta(days=DAYS - 1)
    spec = bench.spec(folder / "orders_{date}.csv")
    return {"kind": "backfill", "spec": str(spec), "db": url, "start": first.isoformat(), "end": last.isoformat(),
            "jobs": JOBS}


def run(bench: Bench, rep: int) -> None:
    """The backfill measurements of one round, each in its own database."""
    from benchmarks.scenarios import check_identity, prepare_pgstage_target, settle

    clean = bench.data("clean")
    for name, empty in (("backfill", False), ("backfill_empty", True)):
        folder = bench.workdir / f"daily-{name}"
        if not folder.exists():
            daily_files(clean, folder, empty=empty)
        with bench.database(name) as url:
            prepare_pgstage_target(bench, url)
            settle(url)
            result = bench.child(_job(bench, folder, url))
            bench.record(name, rep, result, 0 if empty else clean.rows)
            check_identity(name, result)
            want = 0 if empty else clean.rows
            if result["counts"]["inserted"] != want or result["units"]["failed"]:
                from benchmarks.scenarios import BenchmarkFailure
                raise BenchmarkFailure(f"{name}: inserted {result['counts']['inserted']}, expected {want};"
                                       f" units {result['units']}")
            result["per_unit_s"] = result["seconds"] / DAYS


def shell_noop(bench: Bench, rep: int, url: str, spec: Path, rows: int) -> None:
    """`pgstage run SPEC` of a loaded file timed from the shell, and the interpreter's and imports' share."""
    from benchmarks.scenarios import settle

    settle(url)
    # As a user's installation runs: with the modules' bytecode cached (pip compiles it at install). Where
    # PYTHONDONTWRITEBYTECODE is set (as on the shared machine), every child would compile pgstage's sources
    # anew; the cache goes under the bench's workdir, filled by one untimed run of each command.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(bench.workdir / "pycache")
    commands = (("noop_shell", [sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", url]),
                ("startup", [sys.executable, "-c", "import pgstage.cli"]),
                ("python_bare", [sys.executable, "-c", "pass"]))
    for _, argv in commands:
        subprocess.run(argv, capture_output=True, env=env)
    for name, argv in commands:
        started = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            from benchmarks.scenarios import BenchmarkFailure
            raise BenchmarkFailure(f"{name} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
        bench.record(name, rep, {"seconds": seconds, "maxrss_kb": 0, "status": "succeeded" if name != "noop_shell"
                                 else "skipped", "counts": {}}, rows if name == "noop_shell" else 0)
