"""Cross-check: the same snapshots through a dbt snapshot (timestamp strategy, hard deletes
invalidated) and through pgstage's scd2 (version = updated_at, on_missing = "close") give the
same validity intervals per key. Skipped where dbt (dbt-core + dbt-postgres) is not installed.

dbt closes a hard-deleted key at its `snapshot_get_time()`; the test project overrides that
macro with the day's as-of time, which pgstage gets as `--as-of`, so both close at one instant.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import pgstage

DBT = shutil.which("dbt")
pytestmark = pytest.mark.skipif(DBT is None, reason="dbt is not installed (pip install dbt-core dbt-postgres)")

SPEC = """
[pipeline]
name = "cust"
target = "pgs.cust"
key = ["id"]
strategy = "scd2"
version = "updated_at"

[scd2]
on_missing = "close"
track = ["email"]

[source]
path = "snap.csv"

[columns]
id = { from = "id", type = "integer" }
email = { from = "email", type = "text" }
updated_at = { from = "updated_at", type = "timestamptz" }
"""


def utc(day: int, hour: int = 0) -> datetime:
    return datetime(2024, 1, day, hour, tzinfo=timezone.utc)


# Day i's full snapshot, loaded as of the next midnight.
DAYS: list[tuple[datetime, list[tuple[int, str, datetime]]]] = [
    (utc(2), [(1, "a", utc(1, 10)), (2, "b", utc(1, 11)), (3, "c", utc(1, 12))]),
    (utc(3), [(1, "a", utc(1, 10)), (2, "b2", utc(2, 9)), (4, "d", utc(2, 10))]),            # 3 deleted
    (utc(4), [(1, "a", utc(1, 10)), (2, "b2", utc(2, 9)), (3, "c3", utc(3, 8))]),            # 3 back, 4 deleted
]
EXPECTED = {
    1: [(utc(1, 10), None)],
    2: [(utc(1, 11), utc(2, 9)), (utc(2, 9), None)],
    3: [(utc(1, 12), utc(3)), (utc(3, 8), None)],
    4: [(utc(2, 10), utc(4))],
}


def dbt_project(folder: Path, db_url: str, port: int) -> None:
    info = conninfo_to_dict(db_url)
    (folder / "snapshots").mkdir(parents=True)
    (folder / "macros").mkdir()
    (folder / "dbt_project.yml").write_text(textwrap.dedent("""
        name: scd2_cross_check
        version: "1.0"
        config-version: 2
        profile: cross_check
        snapshot-paths: ["snapshots"]
        macro-paths: ["macros"]
        """))
    (folder / "profiles.yml").write_text(textwrap.dedent(f"""
        cross_check:
          target: dev
          outputs:
            dev:
              type: postgres
              host: "{info.get('host', 'localhost')}"
              port: {port}
              user: "{info.get('user', 'postgres')}"
              password: ""
              dbname: "{info['dbname']}"
              schema: dbt
              threads: 1
        """))
    (folder / "macros" / "as_of.sql").write_text(
        "{% macro postgres__snapshot_get_time() %}'{{ var(\"as_of\") }}'::timestamptz{% endmacro %}\n")
    (folder / "snapshots" / "cust_snap.sql").write_text(textwrap.dedent("""
        {% snapshot cust_snap %}
        {{ config(target_schema='snap', unique_key='id', strategy='timestamp', updated_at='updated_at',
                  hard_deletes='invalidate') }}
        select id, email, updated_at from src.cust
        {% endsnapshot %}
        """))


def intervals(rows: list[tuple[Any, ...]]) -> dict[int, list[tuple[datetime, datetime | None]]]:
    out: dict[int, list[tuple[datetime, datetime | None]]] = {}
    for key, start, end in sorted(rows, key=lambda r: (r[0], r[1])):
        out.setdefault(key, []).append((start, end))
    return out


def test_scd2_matches_a_dbt_snapshot(tmp_path: Path, db_url: str, sql) -> None:
    port = int(sql("SHOW port")[0][0])
    project = tmp_path / "dbt"
    dbt_project(project, db_url, port)
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC))
    sql("CREATE SCHEMA src; CREATE TABLE src.cust (id integer, email text, updated_at timestamptz)")
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    for as_of, rows in DAYS:
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE src.cust")
            with conn.cursor().copy("COPY src.cust FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        done = subprocess.run([str(DBT), "snapshot", "--project-dir", str(project), "--profiles-dir", str(project),
                               "--vars", f"{{as_of: '{as_of.isoformat()}'}}"], env=env, capture_output=True,
                              text=True, timeout=300, cwd=project)
        assert done.returncode == 0, done.stdout + done.stderr
        (tmp_path / "snap.csv").write_text("id,email,updated_at\n" + "".join(
            f"{i},{e},{t.isoformat()}\n" for i, e, t in rows))
        report = pgstage.run(tmp_path / "spec.toml", db=db_url, as_of=as_of, force=True)
        assert report.status == "succeeded"
    ours = intervals(sql("SELECT id, _valid_from, _valid_to FROM pgs.cust"))
    theirs = intervals(sql("SELECT id, dbt_valid_from, dbt_valid_to FROM snap.cust_snap"))
    assert ours == theirs == EXPECTED
