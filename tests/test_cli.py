"""The command line: exit codes, --json, messages a user sees, and that nothing is written on errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from pgstage.cli import app
from tests import specs

runner = CliRunner()

SPEC = specs.template(name="orders", target="shop.orders", path="orders.csv", columns="""
id = { from = "Id", type = "bigint" }
total = { from = "Total", type = "money_cents", min = 0 }
""", load="max_reject_ratio = 0.25").format()


def write(tmp_path: Path, spec: str = SPEC, csv: str = "Id,Total\n1,1.00\n2,2.50\n3,3\n4,4\n") -> Path:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(spec))
    (tmp_path / "orders.csv").write_text(csv)
    return tmp_path / "spec.toml"


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def test_run_json_document(tmp_path: Path, db_url: str) -> None:
    code, out = invoke("run", str(write(tmp_path)), "--db", db_url, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert set(doc) >= {"run_id", "pipeline", "partition", "status", "rows", "rejects_by_rule", "duration_s"}
    assert doc["status"] == "succeeded" and doc["pipeline"] == "orders" and doc["partition"] is None
    assert doc["rows"] == {"read": 4, "rejected": 0, "valid": 4, "duplicate": 0, "inserted": 4, "updated": 0,
                           "unchanged": 0, "stale": 0, "deleted": 0}


def test_table_output_and_rerun_skips(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path)
    code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 0 and "succeeded" in out and "inserted" in out
    code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 0 and "skipped" in out and "--force" in out


def test_reject_threshold_exits_3_and_merges_nothing(tmp_path: Path, db_url: str, sql) -> None:
    spec = write(tmp_path, csv="Id,Total\n1,1.00\n2,-2\n3,x\n4,4\n")
    code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 3, out
    assert "2 of 4 records rejected (50.0%), above max_reject_ratio 0.25: nothing was merged" in out
    assert "total.min (1)" in out and "total.type (1)" in out
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]
    assert sql("SELECT status FROM pgstage.runs") == [("rejected_threshold",)]
    assert sql("SELECT record FROM pgstage.rejects ORDER BY record") == [(2,), (3,)]
    assert sql("SELECT count(*) FROM pgstage.files") == [(0,)]


def test_bad_spec_exits_2_with_every_problem(tmp_path: Path, db_url: str) -> None:
    bad = SPEC.replace('strategy = "upsert"', 'strategy = "upsert"\nversoin = "x"').replace(
        "min = 0", 'min = "zero"')
    code, out = invoke("run", str(write(tmp_path, bad)), "--db", db_url)
    assert code == 2
    assert "spec.toml:7: pipeline.versoin: unknown key (did you mean 'version'?)" in out
    assert "columns.total.min: Input should be a valid number" in out
    assert "Traceback" not in out


def test_unknown_type_exits_2(tmp_path: Path, db_url: str, sql) -> None:
    code, out = invoke("run", str(write(tmp_path, SPEC.replace('"bigint"', '"bigintt"'))), "--db", db_url)
    assert code == 2
    assert "columns.id.type: PostgreSQL has no type 'bigintt'" in out
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]


def test_missing_file_and_bad_partition(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, SPEC.replace('"orders.csv"', '"orders_{date}.csv"'))
    code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 2 and "--partition" in out
    code, out = invoke("run", str(spec), "--db", db_url, "--partition", "2024-13-01")
    assert code == 2 and "is not a date" in out
    code, out = invoke("run", str(spec), "--db", db_url, "--partition", "2024-01-01")
    assert code == 1 and "no source file matches" in out and "orders_2024-01-01.csv" in out


def test_target_mismatch_is_explained(tmp_path: Path, db_url: str, sql) -> None:
    sql("CREATE SCHEMA shop; CREATE TABLE shop.orders (id integer PRIMARY KEY, total bigint)")
    code, out = invoke("run", str(write(tmp_path)), "--db", db_url)
    assert code == 2
    assert "column 'id': spec says bigint, table has integer" in out
    assert sql("SELECT count(*) FROM shop.orders") == [(0,)]


def test_target_without_unique_key_is_refused(tmp_path: Path, db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA shop; CREATE TABLE shop.orders (id bigint, total bigint)")
    code, out = invoke("run", str(write(tmp_path)), "--db", db_url)
    assert code == 2 and "no primary key or unique index on the key (id)" in out


def test_unreachable_database_masks_password(tmp_path: Path) -> None:
    code, out = invoke("run", str(write(tmp_path)), "--db", "postgresql://bob:s3cret@127.0.0.1:1/x")
    assert code == 1
    assert "s3cret" not in out and "cannot connect" in out


def test_runs_and_show(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, csv="Id,Total\n1,1.00\n2,-2\n3,3\n4,4\n5,5\n")
    assert invoke("run", str(spec), "--db", db_url)[0] == 0
    code, out = invoke("runs", "--db", db_url)
    assert code == 0 and "orders" in out and "succeeded" in out
    code, out = invoke("show", "1", "--db", db_url)
    assert code == 0 and "total.min: -200 is below the minimum 0" in out
    code, out = invoke("show", "1", "--db", db_url, "--json")
    assert json.loads(out)["sample_rejects"][0]["record"] == 2
    code, out = invoke("show", "99", "--db", db_url)
    assert code == 2 and "there is no run 99" in out


def test_pipeline_lock_exits_4(tmp_path: Path, db_url: str) -> None:
    import psycopg

    from pgstage.safety import lock_key

    spec = write(tmp_path)
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key("orders", None),))
        code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 4 and "is being loaded by" in out
    assert invoke("run", str(spec), "--db", db_url)[0] == 0


@pytest.mark.parametrize("command", [[], ["run"], ["backfill"], ["repair"], ["runs"], ["show"], ["demo"], ["init"], ["rejects"], ["db"],
                                     ["anomalies"], ["reconcile"], ["report"], ["migrate"], ["reprocess"], ["db", "start"], ["db", "stop"], ["db", "url"], ["db", "env"], ["db", "psql"]])
def test_every_command_has_help(command: list[str]) -> None:
    code, out = invoke(*command, "--help")
    assert code == 0 and "Usage" in out


def test_every_command_is_documented() -> None:
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    for command in ("pgstage run", "pgstage backfill", "pgstage repair", "pgstage runs", "pgstage show", "pgstage demo", "pgstage init",
                    "pgstage rejects", "pgstage anomalies", "pgstage reconcile", "pgstage report", "pgstage migrate", "pgstage reprocess", "pgstage db start", "pgstage db stop", "pgstage db url", "pgstage db env", "pgstage db psql"):
        assert f"## `{command}" in docs, command


def test_exit_statuses_are_named_once_and_carried_by_the_errors() -> None:
    from pgstage import errors
    from pgstage.errors import ExitStatus
    assert [(s.name, int(s)) for s in ExitStatus] == [("OK", 0), ("FAILED", 1), ("USAGE", 2), ("REJECT_LIMIT", 3),
                                                     ("LOCKED", 4), ("ANOMALY", 5), ("DIFFERENCES", 6),
                                                     ("INTERRUPTED", 130)]
    expected = {errors.PgstageError: 1, errors.SpecError: 2, errors.UsageError: 2, errors.SourceError: 1,
                errors.HeaderMismatch: 2, errors.TargetMismatch: 2, errors.RejectLimitExceeded: 3,
                errors.PipelineLocked: 4, errors.DatabaseError: 1, errors.MissingDependency: 2,
                errors.ConnectionFailed: 1, errors.TransientDatabaseError: 1, errors.UntrustedIndexDefinition: 1,
                errors.AnomalyBlocked: 5, errors.ReconcileDifferences: 6}
    assert {cls: cls("x").exit_code for cls in expected} == expected


def test_a_bad_option_exits_2_with_the_usage(tmp_path: Path) -> None:
    code, out = invoke("run", str(write(tmp_path)), "--bogus")
    assert code == 2 and "No such option: --bogus" in out


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the app with its words (`("db", "url")`), from typer's own command tree."""
    children = getattr(command, "commands", None)
    if children is None:
        yield path, command
        return
    for name, child in children.items():
        yield from _commands(child, (*path, name))


def test_every_option_of_every_command_is_in_its_docs_section() -> None:
    """`docs/cli.md` has a section per command; each of the command's options must appear in it."""
    docs = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    sections = {}   # "pgstage db url" -> its heading and text
    for section in re.split(r"^(?=## )", docs, flags=re.M)[1:]:
        heading = re.match(r"## `([^`]*)`", section)
        assert heading, section.splitlines()[0]
        sections[" ".join(w for w in heading[1].split() if w.islower() and not w.startswith(("[", "-")))] = section
    missing = []
    for words, command in _commands(typer.main.get_command(app)):
        name = " ".join(("pgstage", *words))
        if name not in sections:
            missing.append(f"{name}: no section")
            continue
        for param in command.params:
            if param.param_type_name == "option":
                missing += [f"{name}: {opt}" for opt in param.opts
                            if opt.startswith("--") and opt not in sections[name]]
    assert missing == []


def test_trace_sql_shows_copy_too(tmp_path: Path, db_url: str) -> None:
    """PGSTAGE_TRACE_SQL=1 prints every statement, COPY included (read when pgstage is imported)."""
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(write(tmp_path)), "--db", db_url],
                            env={**os.environ, "PGSTAGE_TRACE_SQL": "1"}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r'^-- stage: copy\nCOPY "pgstage"\."_stg_1_0_0" ', result.stderr, flags=re.M)
    assert "-- validate" in result.stderr and "-- merge" in result.stderr
