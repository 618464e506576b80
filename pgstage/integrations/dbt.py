"""dbt on the tables pgstage loads (`pip install "pgstage[dbt]"`).

dbt-postgres reads its connection from `profiles.yml`; the example's profile reads libpq's
variables (PGHOST, PGPORT, PGUSER, PGDATABASE), which `dbt_env` gives for the database
pgstage uses (for the embedded server PGHOST is its Unix socket directory). `run_dbt` runs a
dbt command in-process with those variables and returns what each node did.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgstage import MissingDependency, PgstageError, connection_env

try:
    from dbt.cli.main import dbtRunner
except ImportError:  # pragma: no cover - exercised where the extra is absent
    raise MissingDependency("the dbt integration needs dbt-core and dbt-postgres",
                            hint='pip install "pgstage[dbt]"') from None


@dataclass
class DbtFailed(PgstageError):
    """dbt could not run the command at all (a bad project or profile, an unreachable database)."""


@dataclass(frozen=True)
class NodeResult:
    unique_id: str          # model.sales.orders_daily, test.sales.…, snapshot.sales.customers_snapshot
    status: str             # success | pass | fail | error | warn | skipped
    message: str | None


@dataclass(frozen=True)
class DbtResult:
    success: bool           # every node succeeded or passed
    nodes: tuple[NodeResult, ...]

    def failed(self) -> tuple[NodeResult, ...]:
        return tuple(n for n in self.nodes if n.status in ("fail", "error", "skipped"))


def dbt_env(db: str | None = None) -> dict[str, str]:
    """PG* variables of the database pgstage uses, for a profiles.yml that reads them."""
    return connection_env(db)


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """dbt reads env_var() from os.environ, so the variables are set there for the call only."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_dbt(args: Sequence[str], *, project_dir: str | Path, profiles_dir: str | Path | None = None,
            db: str | None = None, env: dict[str, str] | None = None) -> DbtResult:
    """Run `dbt ARGS` on the project against pgstage's database; test failures are in the result."""
    project = Path(project_dir).resolve()
    argv = [*args, "--project-dir", str(project), "--profiles-dir", str(Path(profiles_dir or project).resolve())]
    with _environment({**dbt_env(db), **(env or {})}):
        outcome = dbtRunner().invoke(argv)
    if outcome.exception is not None:
        raise DbtFailed(f"dbt {' '.join(args)} could not run: {outcome.exception}",
                        hint="check the project and that `pgstage db env` reaches the database")
    results: Any = getattr(outcome.result, "results", None) or ()
    nodes = tuple(NodeResult(r.node.unique_id, str(r.status), r.message) for r in results)
    return DbtResult(bool(outcome.success), nodes)
