"""`pgstage demo`: generate the three-source sales data set and load it day by day.

The specs are the ones in `examples/sales/`; the data goes to `./pgstage-demo/data`, so the
spec paths (`data/<source>/orders_{date}.csv`) resolve against `./pgstage-demo`. The data is
deterministic: a second demo regenerates identical bytes, and every file is skipped.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from psycopg import sql

from pgstage.db import connect, execute, resolve_url
from pgstage.demo.generate import SOURCES, generate
from pgstage.errors import SourceError
from pgstage.htmlreport import write_demo_reports
from pgstage.report import RunReport
from pgstage.run import run
from pgstage.spec import load_spec

START = date(2024, 1, 1)
# The three feeds into sales.orders, then the Stripe payments' history (scd2) from the same files.
SPECS = (*SOURCES, "stripe_history")
# Measured: 2 days of 50,000 orders write 9.7 MB of CSV (97 bytes an order, three sources
# together). The database holds about three times the files' bytes (rows, key index, WAL).
FILE_BYTES_PER_ORDER = 100
DATABASE_FACTOR = 3


def estimated_bytes(days: int, orders_per_day: int) -> tuple[int, int]:
    """(the generated files, the loaded database), roughly: 730 days of 50,000 orders are 3.7 GB and 11 GB."""
    files = days * orders_per_day * FILE_BYTES_PER_ORDER
    return files, files * DATABASE_FACTOR


def check_disk(workdir: Path, days: int, orders_per_day: int) -> None:
    """Refuse before writing anything when the files and the database would not fit on the disk."""
    files, database = estimated_bytes(days, orders_per_day)
    free = shutil.disk_usage(workdir).free
    if files + database > free:
        raise SourceError(f"{days} days of {orders_per_day:,} orders need about {files / 1e9:.1f} GB of files and"
                          f" {database / 1e9:.1f} GB of database; {free / 1e9:.1f} GB are free under {workdir}",
                          hint="lower --days or --orders-per-day, or free some space")


@dataclass(frozen=True)
class DemoResult:
    workdir: Path
    reports: tuple[RunReport, ...]
    revenue: tuple[tuple[Any, ...], ...]   # (day, source, orders, revenue) of confirmed orders
    report_html: Path | None = None        # the last loaded run's page (pipeline pages beside it)


def specs_dir() -> Path:
    found = Path(__file__).resolve().parents[2] / "examples" / "sales"
    if not found.is_dir():
        raise SourceError(f"the demo specs are not at {found}",
                          hint="run the demo from a source checkout installed with `pip install -e .`")
    return found


def run_demo(workdir: Path, *, days: int = 7, orders_per_day: int = 50_000, seed: int = 42, db: str | None = None,
             on_report: Callable[[RunReport], None] | None = None) -> DemoResult:
    """Generate (deterministically) and load every source for every day; return reports and revenue."""
    workdir.mkdir(parents=True, exist_ok=True)
    check_disk(workdir, days, orders_per_day)
    generate(workdir / "data", days=days, orders_per_day=orders_per_day, seed=seed, start=START)
    url = resolve_url(db)
    reports = []
    for day in (START + timedelta(days=i) for i in range(days)):
        for source in SPECS:
            spec = load_spec(specs_dir() / f"{source}.toml")
            report = run(spec, partition=day, db=url, base_dir=workdir)
            reports.append(report)
            if on_report:
                on_report(report)
    with connect(url) as conn:
        revenue = execute(conn, sql.SQL(
            "SELECT (ordered_at AT TIME ZONE 'UTC')::date AS day, source, count(*) AS orders,"
            " sum(amount_cents - coalesce(refunded_cents, 0)) / 100.0 AS revenue"
            " FROM sales.orders WHERE status = 'confirmed' GROUP BY 1, 2 ORDER BY 1, 2"), label="demo: revenue").fetchall()
    page = write_demo_reports(workdir, [r.run_id for r in reports if r.run_id is not None and r.status == "succeeded"],
                              [r.pipeline for r in reports], db=url)
    return DemoResult(workdir, tuple(reports), tuple(tuple(r) for r in revenue), page)
