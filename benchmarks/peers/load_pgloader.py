"""pgloader (Debian's package): an append-only CSV load into the benchmark's table.

pgloader reaches a Unix socket with `unix:/dir:port` as the host, so the embedded server
(socket only) needs no TCP. Its defaults are kept: rows the server refuses go to a reject
file and the load goes on; the exit code stays 0, so the summary's error count is reported.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks.baselines import COLUMNS
from benchmarks.peers import external, target

COMMAND = """\
LOAD CSV
     FROM '{path}' ({columns})
     INTO {url}
     TARGET TABLE bench.orders
     WITH skip header = 1, fields optionally enclosed by '"', fields escaped by double-quote,
          fields terminated by ','
;
"""
SUMMARY = re.compile(r"Total import time\s+(\S+)\s+(\d+)")


def url(server: target.Server) -> str:
    auth = quote(server.user, safe="") + (f":{quote(server.password, safe='')}" if server.password else "")
    host = f"unix:{server.host}:{server.port}" if server.socket else f"{server.host}:{server.port}"
    return f"postgresql://{auth}@{host}/{quote(server.dbname, safe='')}"


def load(job: dict[str, Any]) -> dict[str, Any]:
    work = Path(job["workdir"]) / f"pgloader-{job['step']}"
    work.mkdir(parents=True, exist_ok=True)
    command = work / "orders.load"
    command.write_text(COMMAND.format(path=job["file"], columns=", ".join(COLUMNS), url=url(target.from_job(job))),
                       encoding="utf-8")
    log = work / "output.log"
    code = external.run(["pgloader", "--root-dir", str(work / "root"), str(command)], log)
    first_error, lines = external.scan(log, lambda line: " ERROR " in line or " FATAL " in line)
    if code != 0:
        raise external.ToolFailed((first_error or (lines[-1:] or ["no output"])[0])[:400])
    summary = next((m for m in map(SUMMARY.search, reversed(lines)) if m), None)
    errors = int(summary.group(1)) if summary and summary.group(1).isdigit() else 0
    return {"tool_errors": errors, "tool_rows": int(summary.group(2)) if summary else None,
            "tool_first_error": first_error.split(" ERROR ", 1)[-1][:400] if first_error else None}
