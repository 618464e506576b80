"""`pgstage run SPEC`: load one pipeline (one partition)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pgstage.cli import render
from pgstage.cli.progress import run_progress
from pgstage.ops import logs

DbOption = Annotated[Optional[str], typer.Option("--db", help="PostgreSQL URL (default: PGSTAGE_DATABASE_URL, else the embedded server)", show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of tables.")]
LogFormatOption = Annotated[Optional[str], typer.Option("--log-format", help="Logs on stderr as json or console (default: PGSTAGE_LOG_FORMAT, else console).", show_default=False)]
LogLevelOption = Annotated[Optional[str], typer.Option("--log-level", help="debug, info, warning or error (default: PGSTAGE_LOG_LEVEL, else info for json, warning for console).", show_default=False)]


def run_command(
    spec: Annotated[Path, typer.Argument(help="The pipeline spec (TOML).", show_default=False)],
    partition: Annotated[Optional[str], typer.Option("--partition", help="Day to load (YYYY-MM-DD); fills {date} in source.path.")] = None,
    as_of: Annotated[Optional[str], typer.Option("--as-of", help="scd2: when the snapshot is valid from (ISO timestamp; default: the partition's day end, else the run's start).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Load files even if these exact bytes were loaded before.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Stage and validate, forecast the merge, write nothing to the target.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    log_format: LogFormatOption = None,
    log_level: LogLevelOption = None,
) -> None:
    """Stage, validate, deduplicate and merge a source into its target; print the run's counts."""
    from pgstage.run import AnomalyReport, RejectLimitReport, run   # the pipeline: not for `--help` or other commands

    logs.configure(log_format, log_level)
    try:
        with run_progress():
            report = run(spec, partition=partition, db=db, force=force, dry_run=dry_run, as_of=as_of)
    except (RejectLimitReport, AnomalyReport) as exc:
        if exc.report is not None:
            render.print_json(exc.report.as_dict()) if as_json else render.report(exc.report)
        raise
    render.print_json(report.as_dict()) if as_json else render.report(report)


def repair_command(
    spec: Annotated[Path, typer.Argument(help="The pipeline spec whose target to repair.", show_default=False)],
    db: DbOption = None,
) -> None:
    """Rebuild indexes a killed run left dropped and remove leftover staging tables (every run does this too)."""
    from pgstage.repair import repair

    result = repair(spec, db=db)
    render.console.print(f"{result.target}: rebuilt {len(result.rebuilt_indexes)} index(es)"
                         + (f" ({', '.join(result.rebuilt_indexes)})" if result.rebuilt_indexes else "")
                         + f", dropped {len(result.dropped_tables)} leftover staging table(s)")
