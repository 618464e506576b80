"""`pgstage db env` (the PG* variables dbt and psql read) and `pgstage demo --generate-only` (files for an orchestrator)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.db import connection_env

runner = CliRunner()


def test_env_reaches_the_same_database_with_libpq_variables_alone(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    result = runner.invoke(app, ["db", "env", "--db", db_url])
    assert result.exit_code == 0, result.output
    variables = {}
    for line in result.output.splitlines():
        assert line.startswith("export ")
        name, _, value = line.removeprefix("export ").partition("=")
        variables[name] = shlex.split(value)[0]
    expected = conninfo_to_dict(db_url)
    assert set(variables) == {"PGHOST", "PGPORT", "PGUSER", "PGDATABASE"}
    assert variables["PGHOST"] == expected["host"]          # the embedded server: its socket directory
    assert os.path.isdir(variables["PGHOST"])
    assert variables["PGDATABASE"] == expected["dbname"]
    for name in ("PGSTAGE_DATABASE_URL", "PGPASSWORD", "PGSERVICE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with psycopg.connect("") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (expected["dbname"],)


def test_env_json_never_prints_a_password() -> None:
    url = "postgresql://loader:s3cret@db.example.com:6543/warehouse?sslmode=require"
    result = runner.invoke(app, ["db", "env", "--db", url, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"PGHOST": "db.example.com", "PGPORT": "6543", "PGUSER": "loader",
                                         "PGDATABASE": "warehouse", "PGSSLMODE": "require"}
    assert "s3cret" not in result.output


def test_env_defaults_port_and_database_like_libpq() -> None:
    assert connection_env("host=/tmp/sock user=alice") == {"PGHOST": "/tmp/sock", "PGPORT": "5432", "PGUSER": "alice",
                                                           "PGDATABASE": "alice"}


def test_env_of_an_unparseable_url_exits_1_with_a_hint() -> None:
    result = runner.invoke(app, ["db", "env", "--db", "host='unterminated"])
    assert result.exit_code == 1
    assert "cannot be parsed" in result.output
    assert "Traceback" not in result.output


def test_demo_generate_only_writes_the_files_and_loads_nothing(tmp_path: Path, db_url: str, sql: Any) -> None:
    result = runner.invoke(app, ["demo", "--generate-only", "--days", "2", "--orders-per-day", "30",
                                 "--dir", str(tmp_path / "demo"), "--db", db_url])
    assert result.exit_code == 0, result.output
    files = sorted(p.relative_to(tmp_path / "demo" / "data").as_posix() for p in (tmp_path / "demo" / "data").rglob("*.csv"))
    assert files == [f"{s}/orders_2024-01-0{d}.csv" for s in ("shopify", "stripe", "woocommerce") for d in (1, 2)]
    assert "6 files" in result.output and "nothing loaded" in result.output
    assert sql("SELECT to_regclass('pgstage.runs'), to_regclass('sales.orders')") == [(None, None)]
