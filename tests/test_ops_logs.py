"""Structured logs and the progress bar, through the real CLI in a child process.

The JSON log on stderr is parsed line by line; stdout stays one JSON document. The progress
bar appears under a pseudo-terminal and never on a pipe.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from pgstage.ops import logs

SPEC = """
[pipeline]
name = "orders"
target = "shop.orders"
key = ["id"]

[source]
path = "orders_{date}.csv"

[columns]
id = { from = "Id", type = "bigint" }
total = { from = "Total", type = "numeric(10,2)", min = 0 }

[load]
batch_rows = 2
workers = 1
max_reject_ratio = 0.2
"""


def write(tmp_path: Path, csv: str, day: str = "2024-03-05") -> Path:
    (tmp_path / "spec.toml").write_text(textwrap.dedent(SPEC))
    (tmp_path / f"orders_{day}.csv").write_text(csv)
    return tmp_path / "spec.toml"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pgstage.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def events(stderr: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


def test_json_log_of_a_real_run(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, "Id,Total\n1,1.00\n2,2.50\n3,3\n3,4\n5,5\n")
    done = cli("run", str(spec), "--partition", "2024-03-05", "--db", db_url, "--json", "--log-format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)          # stdout is one clean document
    lines = events(done.stderr)               # every stderr line is one JSON event
    names = [e["event"] for e in lines]
    assert names[0] == "run started" and names[-1] == "run finished"
    assert names.count("file started") == 1
    assert names.count("batch staged") == names.count("batch validated") == names.count("batch merged") == 3
    assert names.index("volume judged") > max(i for i, n in enumerate(names) if n == "batch validated")
    assert names.index("volume judged") < min(i for i, n in enumerate(names) if n == "batch merged")
    for e in lines:
        assert (e["run_id"], e["pipeline"], e["partition"]) == (report["run_id"], "orders", "2024-03-05")
        assert e["level"] in ("info", "warning") and e["timestamp"].endswith("Z")
    staged = [e for e in lines if e["event"] == "batch staged"]
    assert [(e["batch"], e["read"]) for e in staged] == [(0, 2), (1, 2), (2, 1)]
    merged = [e for e in lines if e["event"] == "batch merged"]
    assert sum(e["inserted"] for e in merged) == 4 and all(e["seconds"] >= 0 for e in merged)
    finished = lines[-1]
    assert {k: finished[k] for k in ("read", "rejected", "valid", "duplicate", "inserted")} == {
        "read": 5, "rejected": 0, "valid": 5, "duplicate": 1, "inserted": 4}
    assert finished["status"] == "succeeded"
    volume = next(e for e in lines if e["event"] == "volume judged")
    assert volume["verdict"] == "learning"


def test_json_log_of_a_failing_run(tmp_path: Path, db_url: str, sql: Any) -> None:
    spec = write(tmp_path, "Id,Total\n1,1.00\n2,-2\n3,-3\n4,4\n")
    done = cli("run", str(spec), "--partition", "2024-03-05", "--db", db_url, "--log-format", "json")
    assert done.returncode == 3, done.stderr
    lines = [e for e in events("\n".join(line for line in done.stderr.splitlines() if line.startswith("{")))]
    names = [e["event"] for e in lines]
    assert names[:2] == ["run started", "file started"]
    assert names[-2:] == ["threshold exceeded", "run failed"]
    assert "batch merged" not in names and "volume judged" not in names
    over = lines[-2]
    assert (over["read"], over["rejected"], over["rejects_by_rule"]) == (4, 2, {"total.min": 2})
    failed = lines[-1]
    assert (failed["status"], failed["exit_code"], failed["level"]) == ("rejected_threshold", 3, "error")
    assert failed["run_id"] == sql("SELECT max(run_id) FROM pgstage.runs")[0][0]
    assert "nothing was merged" in failed["message"]
    assert sql("SELECT to_regclass('shop.orders')") == [(None,)]


def test_console_logs_are_quiet_by_default_and_warn_on_a_threshold(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, "Id,Total\n1,1.00\n2,2\n")
    done = cli("run", str(spec), "--partition", "2024-03-05", "--db", db_url, "--json")
    assert done.returncode == 0 and done.stderr == ""
    write(tmp_path, "Id,Total\n1,-1\n2,-2\n")
    done = cli("run", str(spec), "--partition", "2024-03-05", "--db", db_url, env={"PGSTAGE_LOG_FORMAT": "console"})
    assert done.returncode == 3
    assert "threshold exceeded" in done.stderr and "run failed" in done.stderr


def test_bad_log_options_are_usage_errors(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, "Id,Total\n1,1\n")
    done = cli("run", str(spec), "--db", db_url, "--log-format", "xml")
    assert done.returncode == 2 and "log format 'xml' is not one of console, json" in done.stderr
    done = cli("run", str(spec), "--db", db_url, "--log-level", "loud")
    assert done.returncode == 2 and "log level 'loud' is not one of debug, info, warning, error" in done.stderr


def test_secrets_never_reach_a_line(capsys: Any) -> None:
    logs.configure("json", "info")
    logs.secret("https://hooks.example.com/T0/B0/s3cr3t")
    logs.emit("alert sent", target="https://hooks.example.com/T0/B0/s3cr3t", note="posted to https://hooks.example.com/T0/B0/s3cr3t",
              db="postgresql://app:hunter2@db:5432/x", conninfo="host=db password=hunter2 user=app")
    line = json.loads(capsys.readouterr().err)
    assert "s3cr3t" not in json.dumps(line) and "hunter2" not in json.dumps(line)
    assert line["db"] == "postgresql://app:***@db:5432/x" and line["conninfo"] == "host=db password=*** user=app"


def _under_pty(args: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout on a pipe); return its code and the terminal's text."""
    leader, follower = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "pgstage.cli", *args], stdout=subprocess.PIPE, stderr=follower,
                             env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"})
    os.close(follower)
    seen = bytearray()
    while True:
        ready, _, _ = select.select([leader], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:   # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        elif child.poll() is not None:
            break
    os.close(leader)
    assert child.stdout is not None
    child.stdout.read()
    return child.wait(timeout=120), seen.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_only(tmp_path: Path, db_url: str) -> None:
    spec = write(tmp_path, "Id,Total\n" + "".join(f"{i},{i}\n" for i in range(1, 11)))
    code, terminal = _under_pty(["run", str(spec), "--partition", "2024-03-05", "--db", db_url])
    assert code == 0, terminal
    assert "orders_2024-03-05.csv · 10 records" in terminal
    assert "batches merged" in terminal and "5/5" in terminal
    assert "━" in terminal   # the bar itself
    done = cli("run", str(spec), "--partition", "2024-03-05", "--db", db_url, "--force")
    assert done.returncode == 0
    assert "━" not in done.stderr and "batches merged" not in done.stderr and "records" not in done.stderr
