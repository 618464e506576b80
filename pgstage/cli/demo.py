"""`pgstage demo`: the sales example end to end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from pgstage.cli import render
from pgstage.cli.run import DbOption
from pgstage.ops import logs

if TYPE_CHECKING:
    from pgstage.report import RunReport


def demo_command(
    days: Annotated[int, typer.Option("--days", min=1, help="Days of daily files per source.")] = 7,
    orders_per_day: Annotated[int, typer.Option("--orders-per-day", min=10, help="Orders per day, all sources together.")] = 50_000,
    workdir: Annotated[Path, typer.Option("--dir", help="Where the generated files go.")] = Path("pgstage-demo"),
    db: DbOption = None,
    generate_only: Annotated[bool, typer.Option("--generate-only", help="Write the files only; an orchestrator loads them.")] = False,
) -> None:
    """Generate Shopify, WooCommerce and Stripe exports with real-world faults and load them into sales.orders."""
    # Imported inside the command: the CLI's start-up does not pay for it unless it runs (docs/performance.md).
    from pgstage.demo import START, estimated_bytes, run_demo
    from pgstage.demo.generate import generate

    if generate_only:
        paths = generate(workdir / "data", days=days, orders_per_day=orders_per_day, start=START)
        render.console.print(f"{len(paths)} files from {START} in {workdir}/data; nothing loaded")
        return
    files, database = estimated_bytes(days, orders_per_day)
    render.console.print(f"generating {days} days × {orders_per_day:,} orders into {workdir}/data"
                         f" (about {files / 1e9:.2f} GB of files, {database / 1e9:.2f} GB once loaded) …")
    table = Table(title="runs", title_justify="left", show_edge=False)
    for name in ("run", "pipeline", "day", "status", *render.COUNT_KEYS, "seconds"):
        table.add_column(name, justify="left" if name in ("pipeline", "day", "status") else "right")

    def add(rep: RunReport) -> None:
        c = rep.counts
        table.add_row(str(rep.run_id), rep.pipeline, rep.partition or "", rep.status,
                      *(f"{getattr(c, k):,}" for k in render.COUNT_KEYS), f"{rep.duration_s:.2f}")

    result = run_demo(workdir, days=days, orders_per_day=orders_per_day, db=db, on_report=add)
    render.console.print(table)
    total = sum((r.counts.read for r in result.reports))
    seconds = sum(r.duration_s for r in result.reports)
    if total:
        render.console.print(f"{total:,} records in {seconds:.1f}s of runs: {total / seconds:,.0f} records/s")
    rejects: dict[str, int] = {}
    for r in result.reports:
        for rule, n in r.rejects_by_rule.items():
            rejects[f"{r.pipeline}: {rule}"] = rejects.get(f"{r.pipeline}: {rule}", 0) + n
    if rejects:
        render.console.print("rejects by rule: " + ", ".join(f"{k} {v:,}" for k, v in sorted(rejects.items())))
    revenue = Table(title="confirmed revenue per day and source (sales.orders)", title_justify="left", show_edge=False)
    for name in ("day", "source", "orders", "revenue"):
        revenue.add_column(name, justify="right" if name in ("orders", "revenue") else "left")
    for day, source, orders, amount in result.revenue:
        revenue.add_row(str(day), source, f"{orders:,}", f"{amount:,.2f}")
    render.console.print(revenue)
    render.console.print("see every run with `pgstage runs`, one run's rejects with `pgstage show RUN_ID`")
    if result.report_html:
        render.console.print(f"report: {result.report_html}", markup=False)
    render.console.print(operations_note(), markup=False, soft_wrap=True)


def operations_note() -> str:
    """Where the demo's logs and alerts went (docs/operations.md), so a reader knows where to look next time."""
    from pgstage.demo import SOURCES, specs_dir
    from pgstage.ops.alerts import masked, targets
    from pgstage.spec import load_spec

    found = sorted({masked(t.url) for source in SOURCES for t in targets(load_spec(specs_dir() / f"{source}.toml").alerts)})
    fmt = os.environ.get(logs.ENV_FORMAT) or "console"
    return (f"logs: stderr, {fmt} format (PGSTAGE_LOG_FORMAT=json for one JSON event per line); alerts: "
            + (", ".join(found) if found else "none configured (set PGSTAGE_ALERT_WEBHOOK or PGSTAGE_ALERT_SLACK, or"
               " [alerts] in the spec)") + "; every delivery is recorded in pgstage.alerts")
