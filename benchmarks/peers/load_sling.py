"""Sling, from its platform wheel's bundled binary (the plain `sling` wrapper downloads one at run time).

The source is the CSV file itself (`file://`), the target the benchmark's table; the mode
and keys come from the registry. Telemetry is off and HOME is a scratch directory, so a run
neither phones home nor reads a user's ~/.sling/env.yaml.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from benchmarks.peers import external, registry, target


def binary() -> str:
    path: str = importlib.import_module(registry.sling_module()).SLING_BIN
    if not path or not Path(path).exists():
        raise RuntimeError(f"the Sling wheel has no binary for this platform ({path!r})")
    return path


def _why(lines: list[str]) -> str:
    """Sling prints `fatal:`, then `~ ` lines, the driver's own message (`pq: …`) last: that one says why."""
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == "fatal:"), 0)
    after = [line.strip() for line in lines[start:] if line.strip()]
    driver = [line for line in after if line.startswith("pq:")]
    return (driver[-1] if driver else after[0].lstrip("~ ") if after else "no output")[:400]


def load(job: dict[str, Any]) -> dict[str, Any]:
    options = job["options"]
    work = Path(job["workdir"]) / f"sling-{job['step']}"
    (work / "home").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(work / "home"), "SLING_DISABLE_TELEMETRY": "true",
           "PEERS_TARGET": target.libpq_url(target.from_job(job), sslmode="disable")}
    cmd = [binary(), "run", "--src-stream", f"file://{job['file']}", "--tgt-conn", "PEERS_TARGET",
           "--tgt-object", "bench.orders", "--mode", options["mode"]]
    if "primary_key" in options:
        cmd += ["--primary-key", options["primary_key"]]
    if "update_key" in options:
        cmd += ["--update-key", options["update_key"]]
    log = work / "output.log"
    code = external.run(cmd, log, env)
    _, lines = external.scan(log, lambda line: False, tail=60)
    if code != 0:
        raise external.ToolFailed(_why(lines))
    inserted = [line for line in lines if " inserted " in line]
    return {"tool_output": inserted[-1].split(" INF ", 1)[-1] if inserted else None}
