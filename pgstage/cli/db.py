"""`pgstage db start|stop|url|psql`: the embedded default database."""

from __future__ import annotations

import os
import shutil

import typer

from pgstage import embedded
from pgstage.cli.render import console
from pgstage.db import mask, resolve_url
from pgstage.errors import MissingDependency

app = typer.Typer(help="The embedded PostgreSQL under .pgstage/pgdata (or the database --db names).", no_args_is_help=True)


@app.command("start")
def start() -> None:
    """Start the embedded server (it keeps running until `pgstage db stop`)."""
    url = embedded.start()
    console.print(f"embedded PostgreSQL running: {url}")


@app.command("stop")
def stop() -> None:
    """Stop the embedded server of this directory."""
    console.print("stopped" if embedded.stop() else "not running")


@app.command("url")
def url() -> None:
    """Print the connection URL pgstage uses (password masked)."""
    print(mask(resolve_url(None)))


@app.command("psql")
def psql() -> None:
    """Open psql on the database pgstage uses."""
    target = resolve_url(None)
    wheel_psql = embedded.psql_path()
    binary = str(wheel_psql) if wheel_psql.exists() else shutil.which("psql")
    if not binary:
        raise MissingDependency("psql not found", hint="install the PostgreSQL client")
    os.execv(binary, [binary, target])
