"""Every folder under tests/cases is one end-to-end case, run by the single test below.

A folder holds `spec.toml`, its input file(s) and `expected.json`; optionally `setup.sql`
(run before the first run). The folder is copied into a fresh directory and loaded into a
fresh database. `expected.json` describes one run, or several under "runs":

    {
      "status": "succeeded" | "skipped" | "rejected_threshold",
      "rows": {"read": .., "rejected": .., "valid": .., "duplicate": .., "inserted": ..,
               "updated": .., "unchanged": .., "stale": .., "deleted": ..},
      "rejects": [{"record": 2, "rules": ["amount.type"], "message_contains": "..."}],
      "ignored_fields": ["Extra"],                      (optional)
      "target": [[1, "a", "2024-01-15T15:22:01+00:00"], ...] | null   (null: no table)
    }
    or, for a run that must fail:
    { "error": {"type": "HeaderMismatch", "exit_code": 2, "message_contains": ["..."]} }

A run inside "runs" may also say "copy": {"input.csv": "day2.csv"} (copy a case file over
the spec's source before the run), "force": true and "partition": "2024-01-15". At the top level, "checks":
[{"sql": "...", "rows": [[...]]}] are queries run after the last run, and "xfail":
"BUG: ..." marks a case that shows a known bug.

Rules are `column.rule`, or `parse` for a record COPY cannot parse. Target rows are the
spec's columns in spec order, ordered by the key, rendered by PostgreSQL as JSON
(timestamps as ISO strings in UTC, numerics as numbers).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql as pgsql

import pgstage
from pgstage.errors import PgstageError, RejectLimitExceeded
from pgstage.report import RunReport
from pgstage.spec import Spec, load_spec

CASES = Path(__file__).parent / "cases"
COUNT_KEYS = ["read", "rejected", "valid", "duplicate", "inserted", "updated", "unchanged", "stale", "deleted"]


def _case_params() -> list[Any]:
    params = []
    for folder in sorted(p for p in CASES.iterdir() if p.is_dir()):
        expected = json.loads((folder / "expected.json").read_text(encoding="utf-8"))
        marks = [pytest.mark.xfail(strict=True, reason=expected["xfail"])] if "xfail" in expected else []
        params.append(pytest.param(folder.name, marks=marks, id=folder.name))
    return params


@pytest.mark.parametrize("case", _case_params())
def test_case(case: str, loader, sql) -> None:
    shutil.copytree(CASES / case, loader.root, dirs_exist_ok=True)
    expected = json.loads((loader.root / "expected.json").read_text(encoding="utf-8"))
    if (loader.root / "setup.sql").exists():
        sql((loader.root / "setup.sql").read_text(encoding="utf-8"))
    run_and_check(loader, sql, expected)


# --- the checker, shared with test_messy_csv.py -------------------------------------------------


def run_and_check(loader, sql, expected: dict[str, Any], spec_name: str = "spec.toml") -> list[RunReport]:
    """Run every run `expected` describes and check each against it; returns the reports."""
    spec = load_spec(loader.root / spec_name)
    reports = []
    for number, run in enumerate(expected.get("runs", [expected]), 1):
        where = f"run {number}"
        for dest, src in run.get("copy", {}).items():
            shutil.copyfile(loader.root / src, loader.root / dest)
        target_before = target_rows(sql, spec)
        rejects_before = reject_count(sql)
        runs_before = ledger_runs(sql)
        try:
            report = pgstage.run(loader.root / spec_name, db=loader.db_url, force=run.get("force", False),
                                 partition=run.get("partition"))
        except PgstageError as exc:
            if isinstance(exc, RejectLimitExceeded) and "error" not in run:
                report = exc.report  # type: ignore[attr-defined]
            else:
                assert "error" in run, f"{where}: unexpected {type(exc).__name__}: {exc}"
                check_error(exc, run["error"], where)
                # Before a first run: no target table and no rejects; a failure must leave it so.
                assert target_rows(sql, spec) == target_before, f"{where}: a failed run changed the target"
                assert reject_count(sql) == rejects_before, f"{where}: a failed run recorded rejects"
                new_runs = ledger_runs(sql)[len(runs_before):]
                assert all(status == "failed" for status in new_runs), f"{where}: ledger says {new_runs}"
                continue
        assert "error" not in run, f"{where}: expected {run['error']['type']}, got status {report.status}"
        check_report(sql, spec, report, run, where)
        reports.append(report)
    for check in expected.get("checks", []):
        assert [list(r) for r in sql(check["sql"])] == check["rows"], check["sql"]
    return reports


def check_error(exc: PgstageError, error: dict[str, Any], where: str) -> None:
    assert type(exc).__name__ == error["type"], f"{where}: {type(exc).__name__}: {exc}"
    assert exc.exit_code == error["exit_code"], f"{where}: exit code {exc.exit_code}: {exc}"
    for part in error.get("message_contains", []):
        assert part in str(exc), f"{where}: {part!r} not in the message:\n{exc}"


def check_report(sql, spec: Spec, report: RunReport, run: dict[str, Any], where: str) -> None:
    counts = report.counts.as_dict()
    assert report.status == run["status"], f"{where}: status {report.status} ({report.message})"
    assert counts == {k: run["rows"][k] for k in COUNT_KEYS}, f"{where}: counts"
    # The accounting identity, checked here independently of Counts' own check.
    assert counts["read"] == counts["rejected"] + counts["valid"]
    if report.status == "succeeded":
        assert counts["valid"] == sum(counts[k] for k in ("duplicate", "inserted", "updated", "unchanged", "stale"))
    # The ledger says the same as the report.
    status, ledger_counts = sql("SELECT status, counts FROM pgstage.runs WHERE run_id = %s", (report.run_id,))[0]
    assert (status, ledger_counts) == (report.status, counts), f"{where}: pgstage.runs disagrees with the report"

    actual = rejects_of(sql, report.run_id)
    assert [(r["record"], r["rules"]) for r in actual] == [(r["record"], r["rules"]) for r in run.get("rejects", [])], \
        f"{where}: rejects {actual}"
    for got, want in zip(actual, run.get("rejects", [])):
        if "message_contains" in want:
            assert want["message_contains"] in got["messages"], f"{where}: record {got['record']}: {got['messages']}"

    if "ignored_fields" in run:
        assert [list(f.ignored_fields) for f in report.files] == [run["ignored_fields"]], f"{where}: ignored fields"
    if "target" in run:
        assert target_rows(sql, spec) == run["target"], f"{where}: target rows"


def rejects_of(sql, run_id: int | None) -> list[dict[str, Any]]:
    rows = sql("SELECT record, reasons FROM pgstage.rejects WHERE run_id = %s ORDER BY file, record", (run_id,))
    return [{"record": record,
             "rules": [f"{r['column']}.{r['rule']}" if r["column"] is not None else r["rule"] for r in reasons],
             "messages": " | ".join(r["message"] for r in reasons)}
            for record, reasons in rows]


def reject_count(sql) -> int:
    if sql("SELECT to_regclass('pgstage.rejects')")[0][0] is None:
        return 0
    return int(sql("SELECT count(*) FROM pgstage.rejects")[0][0])


def ledger_runs(sql) -> list[str]:
    """The status of every run in the ledger, oldest first."""
    if sql("SELECT to_regclass('pgstage.runs')")[0][0] is None:
        return []
    return [status for (status,) in sql("SELECT status FROM pgstage.runs ORDER BY run_id")]


def target_rows(sql, spec: Spec) -> list[list[Any]] | None:
    """The target's rows for the spec's columns, ordered by the key; None when there is no table."""
    schema, table = spec.target
    exists = sql("SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, table))
    if not exists:
        return None
    query = pgsql.SQL("SELECT jsonb_build_array({}) FROM {} ORDER BY {}").format(
        pgsql.SQL(", ").join(pgsql.Identifier(c) for c in spec.columns),
        pgsql.Identifier(schema, table),
        pgsql.SQL(", ").join(pgsql.Identifier(k) for k in spec.pipeline.key or spec.columns))
    return [row[0] for row in sql(query)]
