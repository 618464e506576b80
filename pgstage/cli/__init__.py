"""The `pgstage` command: thin typer commands, each calling one library function."""

from __future__ import annotations

import typer

from pgstage.cli import backfill as backfill_commands
from pgstage.cli._errors import ExitMapping
from pgstage.cli import db as db_commands
from pgstage.cli import demo as demo_commands
from pgstage.cli import init as init_commands
from pgstage.cli import migrate as migrate_commands
from pgstage.cli import ops as ops_commands
from pgstage.cli import rejects as rejects_commands
from pgstage.cli import report as report_commands
from pgstage.cli import reprocess as reprocess_commands
from pgstage.cli import run as run_commands
from pgstage.cli import runs as runs_commands

app = typer.Typer(
    name="pgstage",
    help="Load files into PostgreSQL fast and safely: stage, validate, deduplicate, merge, account for every row.",
    pretty_exceptions_show_locals=False,  # locals hold connection URLs
    no_args_is_help=True,
    add_completion=False,
    cls=ExitMapping,   # every command's errors become exit statuses in one place
)
app.command("run")(run_commands.run_command)
app.command("backfill")(backfill_commands.backfill_command)
app.command("repair")(run_commands.repair_command)
app.command("runs")(runs_commands.runs_command)
app.command("show")(runs_commands.show_command)
app.command("demo")(demo_commands.demo_command)
app.command("init")(init_commands.init_command)
app.command("rejects")(rejects_commands.rejects_command)
app.command("report")(report_commands.report_command)
app.command("anomalies")(ops_commands.anomalies_command)
app.command("reconcile")(ops_commands.reconcile_command)
app.command("migrate")(migrate_commands.migrate_command)
app.command("reprocess")(reprocess_commands.reprocess_command)
app.add_typer(db_commands.app, name="db")


def main() -> None:
    app()
