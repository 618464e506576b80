"""The throttle seen from operations: its pauses in the JSON log, the `paused` alert at a real HTTP
receiver, the pause reason on the progress bar under a pseudo-terminal, and `pgstage show`.

Each run is held by a throttle_query that is true until a moment a few seconds ahead, so it
pauses once and resumes by itself, as in tests/test_throttle.py.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.cli.progress import paused_within, remaining_s
from pgstage.errors import SpecError
from pgstage.spec import Spec, parse_spec
from tests import specs
from tests.test_ops_alerts import Receiver, receiver  # noqa: F401 (the fixture)
from tests.test_ops_logs import _under_pty, cli, events

ROWS, BATCH, CHUNK = 3000, 1000, 500
DAY = "2024-03-05"


def write(folder: Path, db_sql: Any, *, hold_s: int = 4, alerts: str = "") -> Path:
    """A partitioned notes pipeline whose throttle_query holds the run for `hold_s` seconds from now."""
    until = db_sql(f"SELECT (clock_timestamp() + interval '{hold_s} seconds')::text")[0][0]
    load = (f"batch_rows = {BATCH}\nworkers = 1\nmerge_chunk_rows = {CHUNK}\nthrottle_timeout = \"2min\"\n"
            f"throttle_query = \"select clock_timestamp() < '{until}'::timestamptz\"")
    text = textwrap.dedent(specs.template(name="thr", target="app.notes", path="notes_{{date}}.csv",
                                          columns=specs.NOTES, load=load).format())
    (folder / "spec.toml").write_text(text + (f"\n[alerts]\n{alerts}\n" if alerts else ""))
    lines = ["id,note", *(f"{i},note {i}" for i in range(1, ROWS + 1))]
    (folder / f"notes_{DAY}.csv").write_text("\n".join(lines) + "\n")
    return folder / "spec.toml"


def test_json_log_of_a_throttled_run_has_its_pause_and_resume(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = write(tmp_path, sql)
    done = cli("run", str(spec), "--partition", DAY, "--db", db_url, "--json", "--log-format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    lines = events(done.stderr)
    names = [e["event"] for e in lines]
    assert names.count("run paused") == 1 and names.count("run resumed") == 1
    assert names.index("run started") < names.index("run paused") < names.index("run resumed") < names.index("run finished")
    paused = next(e for e in lines if e["event"] == "run paused")
    resumed = next(e for e in lines if e["event"] == "run resumed")
    for e in (paused, resumed):
        assert (e["run_id"], e["pipeline"], e["partition"]) == (report["run_id"], "thr", DAY)
        assert e["reason"] == "throttle_query" and e["where"] == paused["where"]
    assert paused["level"] == "warning" and paused["detail"] == "throttle_query is true"
    assert paused["where"] == f"COPY of {tmp_path / f'notes_{DAY}.csv'}"   # the first safe point: before the first window
    assert resumed["level"] == "info"
    recorded = sql("SELECT reason, seconds FROM pgstage.pauses WHERE run_id = %s", (report["run_id"],))
    assert [(r, round(s, 3)) for r, s in recorded] == [("throttle_query", resumed["seconds"])]
    assert report["throttled_s"] == {"throttle_query": resumed["seconds"]}
    assert report["rows"]["inserted"] == ROWS and sql("SELECT count(*) FROM app.notes") == [(ROWS,)]


def test_a_long_pause_sends_the_paused_alert_once(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    spec = write(tmp_path, sql, alerts=f'webhook = "{receiver.url}/hooks/T0/s3cr3t"\npaused_after = "1s"')
    result = CliRunner().invoke(app, ["run", str(spec), "--partition", DAY, "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    assert receiver.events() == ["paused"]              # once, although the pause went on after it
    path, body = receiver.requests[0]
    assert path == "/hooks/T0/s3cr3t"
    message = body.pop("message")
    assert message.startswith("paused for ") and " s so far (longer than paused_after = 1s): throttle_query is true;" in message
    assert message.endswith("fails after throttle_timeout = 2min")
    body.pop("host")
    assert body == {"event": "paused", "pipeline": "thr", "partition": DAY, "run_id": run_id, "status": "paused",
                    "rows": {}, "rejects_by_rule": {}, "more": f"pgstage show {run_id}"}
    assert sql("SELECT run_id, event, status, attempts, target FROM pgstage.alerts") == [
        (run_id, "paused", "sent", 1, f"{receiver.url}/hooks/***")]
    assert sql("SELECT count(*), count(DISTINCT id) FROM app.notes") == [(ROWS, ROWS)]


def test_a_pause_shorter_than_paused_after_sends_nothing(tmp_path: Path, db_url: str, sql: Any,
                                                         receiver: Receiver) -> None:
    spec = write(tmp_path, sql, hold_s=2, alerts=f'webhook = "{receiver.url}/hook"\npaused_after = "1h"')
    result = CliRunner().invoke(app, ["run", str(spec), "--partition", DAY, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert sql("SELECT count(*) FROM pgstage.pauses") == [(1,)]
    assert receiver.requests == [] and sql("SELECT count(*) FROM pgstage.alerts") == [(0,)]


def test_a_receiver_that_fails_changes_nothing(tmp_path: Path, db_url: str, sql: Any, receiver: Receiver) -> None:
    receiver.mode = "fail"
    spec = write(tmp_path, sql, alerts=f'webhook = "{receiver.url}/hook"\npaused_after = "0.5s"\nretries = 0')
    result = CliRunner().invoke(app, ["run", str(spec), "--partition", DAY, "--db", db_url])
    assert result.exit_code == 0, result.output
    assert sql("SELECT event, status, error FROM pgstage.alerts") == [("paused", "failed", "HTTP 500")]
    assert sql("SELECT count(*) FROM app.notes") == [(ROWS,)]


def test_the_progress_bar_says_why_the_run_is_paused(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = write(tmp_path, sql)
    code, terminal = _under_pty(["run", str(spec), "--partition", DAY, "--db", db_url])
    assert code == 0, terminal
    assert "paused: throttle_query is true" in terminal
    assert f"notes_{DAY}.csv · {ROWS:,} records" in terminal


def test_show_lists_the_pauses_and_merge_chunks(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = write(tmp_path, sql)
    result = CliRunner().invoke(app, ["run", str(spec), "--partition", DAY, "--db", db_url, "--json"])
    assert result.exit_code == 0, result.output
    run_id = json.loads(result.stdout)["run_id"]
    shown = CliRunner().invoke(app, ["show", str(run_id), "--db", db_url, "--json"])
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    expected = sql("SELECT reason, detail, seconds FROM pgstage.pauses WHERE run_id = %s", (run_id,))
    assert [(p["reason"], p["detail"], p["seconds"]) for p in doc["pauses"]] == [
        (r, d, round(s, 3)) for r, d, s in expected]
    assert len(doc["pauses"]) == 1
    # 3 batches of 1,000 records, each merged in chunks of 500: records 1-500, 501-1000, ...
    assert [(c["file"], c["batch_no"], c["record_end"]) for c in doc["chunks"]] == [
        (str(tmp_path / f"notes_{DAY}.csv"), b, end) for b in range(3) for end in (b * 1000 + 500, b * 1000 + 1000)]
    assert sum(c["counts"]["inserted"] for c in doc["chunks"]) == ROWS
    text = CliRunner().invoke(app, ["show", str(run_id), "--db", db_url], env={"COLUMNS": "300"})
    assert text.exit_code == 0, text.output
    assert "paused 1 time(s)" in text.stdout and "throttle_query: throttle_query is true" in text.stdout
    file = tmp_path / f"notes_{DAY}.csv"
    assert (f"merge chunks: 6 committed\n  {file} batch 0: up to records 500, 1,000\n"
            f"  {file} batch 1: up to records 1,500, 2,000\n  {file} batch 2: up to records 2,500, 3,000\n") in text.stdout


# --- the progress bar's arithmetic -------------------------------------------------------------------

def test_time_remaining_leaves_paused_time_out() -> None:
    # 100 s since the task started, 60 of them paused: 40 working seconds for half the work.
    pauses: list[tuple[float, float | None]] = [(10.0, 50.0), (90.0, None)]
    assert paused_within(pauses, 0.0, 100.0) == 50.0          # 40 s closed, 10 s of the one still on
    assert paused_within(pauses, 20.0, 100.0) == 40.0         # the task started inside the first pause
    assert paused_within(pauses, 60.0, 80.0) == 0.0
    assert remaining_s(50, 100, 100.0, 60.0) == 40.0
    assert remaining_s(50, 100, 100.0, 0.0) == 100.0          # what the plain rate would have said
    assert remaining_s(0, 100, 10.0, 0.0) is None and remaining_s(5, None, 10.0, 0.0) is None
    assert remaining_s(5, 10, 10.0, 10.0) is None             # paused all along: no rate yet


@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 100)), max_size=5), st.floats(0, 1000), st.floats(0, 1000))
def test_paused_time_is_never_more_than_the_window(spans: list[tuple[float, float]], start: float, width: float) -> None:
    pauses: list[tuple[float, float | None]] = []
    at = 0.0
    for gap, length in spans:   # pauses do not overlap: one run pauses once at a time
        pauses.append((at + gap, at + gap + length))
        at += gap + length
    assert 0.0 <= paused_within(pauses, start, start + width) <= width + 1e-6


def test_bad_paused_after_is_a_spec_error() -> None:
    base = '[pipeline]\nname = "p"\ntarget = "s.t"\nkey = ["id"]\n[source]\npath = "x.csv"\n[columns]\nid = { from = "id" }\n[alerts]\n'
    spec = parse_spec(base + 'paused_after = "2min"\n')
    assert isinstance(spec, Spec) and spec.alerts.paused_after == "2min" and "paused" in spec.alerts.on
    assert parse_spec(base).alerts.paused_after == "5min"
    with pytest.raises(SpecError) as caught:
        parse_spec(base + 'paused_after = "soon"\n')
    assert [p for p in caught.value.problems if "paused_after" in p] == [
        "<spec>:10: alerts.paused_after: expected a duration such as \"10s\" or \"500ms\", got 'soon'"]
