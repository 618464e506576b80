"""`pgstage runs` and `pgstage show RUN_ID`: read the ledger."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from pgstage.cli import render
from pgstage.cli.run import DbOption, JsonOption


def runs_command(
    pipeline: Annotated[Optional[str], typer.Option("--pipeline", help="Only runs of this pipeline.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="How many runs, newest first.")] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent runs from the ledger, newest first."""
    from pgstage.history import recent_runs

    rows = recent_runs(db=db, pipeline=pipeline, limit=limit)
    render.print_json(rows) if as_json else render.runs_table(rows)


def show_command(
    run_id: Annotated[int, typer.Argument(help="A run id from `pgstage runs`.", show_default=False)],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one run: status, counts per file, rejects by rule and sample rejects."""
    from pgstage.history import run_details

    run, samples = run_details(run_id, db=db)
    if as_json:
        render.print_json({**run, "sample_rejects": samples})
    else:
        render.run_details(run, samples)
