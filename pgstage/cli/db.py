"""`pgstage db start|stop|url|psql`: the embedded default database."""

from __future__ import annotations

import json
import os
import shlex
import shutil
from typing import Annotated

import typer

from pgstage import embedded
from pgstage.cli.render import console
from pgstage.cli.run import DbOption
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
    from pgstage.db import mask, resolve_url

    print(mask(resolve_url(None)))


@app.command("env")
def env(db: DbOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of shell lines.")] = False) -> None:
    """Print PGHOST, PGPORT, PGUSER, PGDATABASE for dbt's profiles.yml and psql: `eval "$(pgstage db env)"`."""
    from pgstage.db import connection_env

    variables = connection_env(db)
    if as_json:
        print(json.dumps(variables))
    else:
        print("\n".join(f"export {name}={shlex.quote(value)}" for name, value in variables.items()))


@app.command("psql")
def psql() -> None:
    """Open psql on the database pgstage uses."""
    from pgstage.db import resolve_url

    target = resolve_url(None)
    wheel_psql = embedded.psql_path()
    binary = str(wheel_psql) if wheel_psql.exists() else shutil.which("psql")
    if not binary:
        raise MissingDependency("psql not found", hint="install the PostgreSQL client")
    os.execv(binary, [binary, target])
