"""How the console script ends (pgstage/cli/__init__.py, `leave`): without Python's teardown, but with
everything an exit owes: the atexit handlers, the flushed output, the command's status, and waiting for
a thread that is still alive (then Python's own exit).

Each case runs `console()` (the console script) in a fresh interpreter, with `os._exit` wrapped to
leave a marker: the short way out was taken.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import atexit, os, sys, threading, time
from pathlib import Path
out = Path(sys.argv[1])
real_exit = os._exit

def short_exit(status):
    (out / "short").write_text(str(status))
    real_exit(status)

os._exit = short_exit
atexit.register(lambda: (out / "atexit").write_text("ran"))
if sys.argv[2] == "thread":
    def late():
        time.sleep(0.5)
        (out / "thread").write_text("finished")
    threading.Thread(target=late).start()   # not a daemon: the process must wait for it
sys.argv = ["pgstage", *sys.argv[3:]]
from pgstage.cli import console
console()
"""


def _main(tmp_path: Path, *args: str, thread: bool = False) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path), "thread" if thread else "-", *args],
                          capture_output=True, text=True, timeout=120)
    return done, {p.name for p in tmp_path.iterdir()}


def test_a_command_ends_with_its_output_its_status_and_the_atexit_handlers_but_no_teardown(tmp_path: Path) -> None:
    done, marks = _main(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    assert "Load files into PostgreSQL" in done.stdout and "backfill" in done.stdout and "reconcile" in done.stdout
    assert marks == {"atexit", "short"}   # the handler ran, then the short way out


def test_a_failing_command_keeps_its_status_and_message(tmp_path: Path) -> None:
    done, marks = _main(tmp_path, "run", str(tmp_path / "missing.toml"), "--db", "postgresql://nobody@127.0.0.1:1/x")
    assert done.returncode == 2, done.stderr
    assert "error:" in done.stderr and "missing.toml" in done.stderr
    assert marks == {"atexit", "short"} and (tmp_path / "short").read_text() == "2"
    done, _ = _main(tmp_path, "run")   # click's usage error
    assert done.returncode == 2 and "Missing argument" in done.stderr and "Usage: pgstage run" in done.stderr


def test_a_live_thread_is_waited_for_by_pythons_own_exit(tmp_path: Path) -> None:
    done, marks = _main(tmp_path, "--help", thread=True)
    assert done.returncode == 0, done.stderr
    assert marks == {"atexit", "thread"}   # Python's own exit, which waited for the thread


def test_a_run_report_reaches_a_pipe_whole(tmp_path: Path, db_url: str) -> None:
    data = tmp_path / "orders.csv"
    data.write_text("Id,Total\n" + "".join(f"{i},{i}.50\n" for i in range(1, 2001)), encoding="utf-8")
    spec = tmp_path / "orders.toml"
    spec.write_text(f"""
[pipeline]
name = "exit_orders"
target = "shop.orders"
key = ["id"]
strategy = "upsert"

[source]
path = {json.dumps(str(data))}

[columns]
id = {{ from = "Id", type = "bigint", required = true }}
total_cents = {{ from = "Total", type = "money_cents" }}
""", encoding="utf-8")
    done, marks = _main(tmp_path, "run", str(spec), "--db", db_url, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)   # one whole document on stdout
    assert report["status"] == "succeeded" and report["rows"]["read"] == 2000 and report["rows"]["inserted"] == 2000
    assert marks >= {"atexit", "short"}
    done, _ = _main(tmp_path, "run", str(spec), "--db", db_url)
    assert done.returncode == 0, done.stderr
    assert "skipped into shop.orders" in done.stdout   # the rendered report, flushed before the exit
