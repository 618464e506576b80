"""`pgstage anomalies` and `pgstage reconcile`: operations commands (pgstage/ops/), with their rendering."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from pgstage.cli import render
from pgstage.cli.run import DbOption, JsonOption, LogFormatOption, LogLevelOption
from pgstage.errors import ReconcileDifferences
from pgstage.ops import logs

if TYPE_CHECKING:
    from pgstage.ops.reconcile import ReconcileResult


def anomalies_command(
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Only runs of this pipeline.")] = None,
    accept: Annotated[Optional[int], typer.Option("--accept", help="Accept this run's volume as genuine: it joins the baseline and a rerun of its partition passes.", show_default=False)] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many runs, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the volume verdicts of past runs (ok, flagged, learning, accepted), or accept one run."""
    from pgstage.ops import anomalies

    rows = [anomalies.accept(accept, db=db)] if accept is not None else anomalies.list_verdicts(
        db=db, pipeline=pipeline, limit=limit)
    if as_json:
        render.print_json(rows)
    else:
        _verdicts(rows)


def _verdicts(rows: list[dict[str, Any]]) -> None:
    table = Table(show_edge=False)
    for name in ("run", "pipeline", "partition", "status", "verdict", "read", "expected", "score", "training", "why"):
        table.add_column(name, justify="right" if name in ("run", "read", "score", "training") else "left")
    for r in rows:
        a = r["anomaly"]
        band = a.get("expected")
        table.add_row(str(r["run_id"]), Text(r["pipeline"]), r["partition"] or "", r["status"],
                      a["verdict"] + (" (accepted)" if a.get("accepted") else ""), f"{a['read']:,}",
                      f"{band[0]:,.0f}-{band[1]:,.0f}" if band else "",
                      "" if a.get("score") is None else f"{a['score']:.1f}", str(len(a.get("training_runs") or [])),
                      Text(a["reason"]))
    render.console.print(table)


def reconcile_command(
    spec: Annotated[Path, typer.Argument(help="The pipeline spec (TOML).", show_default=False)],
    partition: Annotated[Optional[str], typer.Option("--partition", help="Day to compare (YYYY-MM-DD); fills {date} in source.path.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
    log_format: LogFormatOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Does the target hold what the source says? Exit 0 when it does, 6 when it does not."""
    logs.configure(log_format, log_level)
    # Imported inside the command: the CLI's start-up does not pay for it unless it runs (docs/performance.md).
    from pgstage.ops.reconcile import reconcile

    result = reconcile(spec, partition=partition, db=db)
    if as_json:
        render.print_json(result.as_dict())
    else:
        _reconcile_report(result)
    if result.differences:   # exit 6 through the app's one mapping (cli/_errors.py)
        raise ReconcileDifferences(f"the target differs from the source: {result.summary}",
                                   hint="the samples above name the keys; a rerun with --force reloads the files")


def _reconcile_report(r: ReconcileResult) -> None:
    title = f"reconcile {r.pipeline}" + (f" {r.partition}" if r.partition else "") + f" → {r.target} (by {r.method})"
    render.console.print(title, markup=False)
    render.console.print(f"source rows {r.source_rows:,}, target rows {r.target_rows:,}"
                         + (f", in flight {r.in_flight:,}" if r.in_flight else "")
                         + (f", newer in the target {r.newer_in_target:,}" if r.newer_in_target else "")
                         + (f"; {r.ranges:,} key ranges compared, {r.fetched:,} rows fetched" if r.method == "checksums"
                            else ""), markup=False)
    for name, finding in (("missing", r.missing), ("different", r.different), ("extra", r.extra)):
        if finding is None or not finding.count:
            continue
        render.console.print(f"{name}: {finding.count:,}" + (
            " (columns: " + ", ".join(f"{c} {n:,}" for c, n in finding.columns.items()) + ")" if finding.columns else ""),
            markup=False)
        for s in finding.sample:
            render.console.print(f"  {s['key']}" + (f" differs in {', '.join(s['columns'])}" if s.get("columns") else ""),
                                 markup=False)
    for note in r.notes:
        render.console.print(f"note: {note}", markup=False)
    render.console.print("[green]clean[/]: the target holds what the source says" if not r.differences
                         else f"[red]differences[/]: {r.summary}")
