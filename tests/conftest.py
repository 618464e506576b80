"""Real PostgreSQL for every test: one embedded server per session, a fresh database per test.

Set PGSTAGE_TEST_DSN to run against another server (it must allow CREATE DATABASE).
"""

from __future__ import annotations

import itertools
import json
import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

import pgstage
from pgstage import embedded
from pgstage.report import RunReport

_numbers = itertools.count()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if dsn := os.environ.get("PGSTAGE_TEST_DSN"):
        yield dsn
        return
    base = tmp_path_factory.mktemp("pg")
    pgdata = base / "pgdata"
    server = embedded._wheel().get_server(pgdata, cleanup_mode="delete")
    yield str(server.get_uri())


@pytest.fixture
def db_url(server_url: str) -> Iterator[str]:
    """A fresh, empty database for one test."""
    name = f"pgstage_test_{os.getpid()}_{next(_numbers)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield make_conninfo(server_url, dbname=name)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sql(db_url: str) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
    """Run a query on the test database and return all rows."""
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute("SET TIME ZONE 'UTC'")

    def query(text: str, params: Any = None) -> list[tuple[Any, ...]]:
        cursor = conn.execute(text, params)
        return cursor.fetchall() if cursor.description else []

    yield query
    conn.close()


class Loader:
    """Writes a spec and its files into a directory and runs pgstage on them."""

    def __init__(self, root: Path, db_url: str) -> None:
        self.root = root
        self.db_url = db_url

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
        return path

    def spec(self, text: str, name: str = "spec.toml") -> Path:
        return self.write(name, textwrap.dedent(text))

    def run(self, spec: str | Path = "spec.toml", **kwargs: Any) -> RunReport:
        report = pgstage.run(self.root / spec, db=self.db_url, **kwargs)
        assert_identity(report)
        return report


def assert_identity(report: RunReport) -> None:
    """SPEC §5, checked independently of Counts' own check, per file and in total."""
    for counts in [report.counts, *(f.counts for f in report.files)]:
        assert counts.read == counts.rejected + counts.valid
        if report.status == "succeeded":
            assert counts.valid == counts.duplicate + counts.inserted + counts.updated + counts.unchanged + counts.stale
    json.dumps(report.as_dict())


@pytest.fixture
def loader(tmp_path: Path, db_url: str) -> Loader:
    return Loader(tmp_path, db_url)
