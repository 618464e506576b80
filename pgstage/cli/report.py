"""`pgstage report RUN_ID --html FILE`, `pgstage report --pipeline NAME --html FILE` and `--backfill ID`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pgstage.cli import render
from pgstage.cli._errors import exits
from pgstage.cli.run import DbOption
from pgstage.errors import UsageError


def report_command(
    run_id: Annotated[Optional[int], typer.Argument(help="A run id from `pgstage runs`.", show_default=False)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="The HTML file to write.", show_default=False)] = None,
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="A pipeline's page instead of one run's.")] = None,
    days: Annotated[int, typer.Option("--days", help="With --pipeline: the last N days of its history.")] = 30,
    backfill: Annotated[Optional[int], typer.Option("--backfill", help="A backfill's page: its units as calendars by status.",
                                                    show_default=False)] = None,
    db: DbOption = None,
) -> None:
    """Write a self-contained HTML page with charts: one run, a pipeline's history, or a backfill's units."""
    with exits():
        if html is None:
            raise UsageError("say where to write the page with --html FILE", hint="pgstage report 12 --html run.html")
        if sum(x is not None for x in (run_id, pipeline, backfill)) != 1:
            raise UsageError("give one of a RUN_ID, --pipeline NAME or --backfill ID",
                             hint="pgstage report 12 --html run.html, pgstage report --pipeline orders --html orders.html,"
                                  " or pgstage report --backfill 3 --html backfill.html")
        # Imported inside the command: the CLI's start-up does not pay for it unless it runs (docs/performance.md).
        from pgstage.htmlreport import write_backfill_report, write_pipeline_report, write_run_report

        written = (write_run_report(run_id, html, db=db) if run_id is not None
                   else write_backfill_report(backfill, html, db=db) if backfill is not None
                   else write_pipeline_report(str(pipeline), html, days=days, db=db))
        render.console.print(f"wrote {written}", markup=False)
