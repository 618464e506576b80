"""The `pgstage` command: thin typer commands, each calling one library function."""

from __future__ import annotations

import sys
from importlib import import_module
from typing import TYPE_CHECKING, Any

import typer

from pgstage.cli._errors import ExitMapping

# Each command: its name, the module under pgstage.cli and the function. Listed once, so that the
# full app and the one-command app of `main()` cannot differ.
COMMANDS = (
    ("run", "run", "run_command"),
    ("backfill", "backfill", "backfill_command"),
    ("repair", "run", "repair_command"),
    ("runs", "runs", "runs_command"),
    ("show", "runs", "show_command"),
    ("demo", "demo", "demo_command"),
    ("init", "init", "init_command"),
    ("rejects", "rejects", "rejects_command"),
    ("report", "report", "report_command"),
    ("anomalies", "ops", "anomalies_command"),
    ("reconcile", "ops", "reconcile_command"),
    ("migrate", "migrate", "migrate_command"),
    ("reprocess", "reprocess", "reprocess_command"),
)
GROUPS = (("db", "db"),)   # command groups: name, module (its `app`)


def build(only: str | None = None) -> typer.Typer:
    """The app with every command, or with the one named `only` (its module alone is imported)."""
    app = typer.Typer(
        name="pgstage",
        help="Load files into PostgreSQL fast and safely: stage, validate, deduplicate, merge, account for every row.",
        pretty_exceptions_show_locals=False,  # locals hold connection URLs
        no_args_is_help=True,
        add_completion=False,
        cls=ExitMapping,   # every command's errors become exit statuses in one place
    )
    for name, module, function in COMMANDS:
        if only in (None, name):
            app.command(name)(getattr(import_module(f"pgstage.cli.{module}"), function))
    for name, module in GROUPS:
        if only in (None, name):
            app.add_typer(import_module(f"pgstage.cli.{module}").app, name=name)
    if only is not None:
        app.callback()(_group)   # a group of one command, not the command itself: `pgstage run SPEC` keeps its usage
    return app


def _group() -> None:
    pass


if TYPE_CHECKING:
    app: typer.Typer   # the full app, built at its first use (see __getattr__)


def __getattr__(name: str) -> Any:
    """`pgstage.cli.app` is built when first asked for: `main()` may need one command only."""
    if name != "app":
        raise AttributeError(f"module 'pgstage.cli' has no attribute {name!r}")
    full = globals()["app"] = build()
    return full


def main() -> None:
    """The console script. A known command name first builds the app of that command only: typer reads
    every command's signature (and we import every command's module) to build the full group, which a
    `pgstage run` from the shell need not pay for (issue #18); `pgstage --help` and anything else get
    the full app."""
    name = sys.argv[1] if len(sys.argv) > 1 else None
    known = {c[0] for c in COMMANDS} | {g[0] for g in GROUPS}
    (build(name) if name in known else build())()
