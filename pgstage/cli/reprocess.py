"""`pgstage reprocess SPEC`: re-derive the target's rows from their kept raw records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pgstage.cli import render
from pgstage.cli.run import DbOption, JsonOption


def reprocess_command(
    spec: Annotated[Path, typer.Argument(help="The pipeline spec (TOML) with the transforms to apply now.", show_default=False)],
    where: Annotated[Optional[str], typer.Option("--where", help="Only rows matching this SQL condition over the target's columns.", show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and count the rows that would change; write nothing to the target.")] = False,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="About how many rows each transaction re-derives.")] = 50_000,
    pause: Annotated[float, typer.Option("--pause", min=0.0, help="Seconds to pause between batches (throttle).")] = 0.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Re-derive every row from its raw record with the spec's current transforms and rules, as a run."""
    from pgstage.reprocess import reprocess

    report = reprocess(spec, db=db, where=where, dry_run=dry_run, batch_rows=batch_rows, pause_s=pause)
    render.print_json(report.as_dict()) if as_json else render.report(report)
