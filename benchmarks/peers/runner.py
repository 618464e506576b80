"""Each peer's chain of steps, each step's child process, and what the SQL checks make of it.

A peer's main chain runs in a fresh database: initial (clean file into the empty target) →
again (the clean file a second time: idempotent?) → incremental (upserting peers only). The
dirty file gets its own fresh database. Before each timed step the target is VACUUM ANALYZEd
and a CHECKPOINT is forced, as in the main suite (`scenarios.settle`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import scenarios
from benchmarks.data import Dataset, seed_file
from benchmarks.peers import registry, target

ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 60          # the parent's own limit beyond --timeout, should the child's alarm not fire
QUIET = {"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "ERROR", "SLING_DISABLE_TELEMETRY": "true"}


@dataclass
class PeerRun:
    bench: scenarios.Bench
    files: dict[str, Dataset]
    timeout: int
    sample: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    round: int = 0

    @property
    def rows(self) -> int:
        return self.files["clean"].rows


def child(job: dict[str, Any], timeout: int) -> dict[str, Any]:
    """Run one step in its own process group, so a hung tool can be ended with everything it started."""
    env = {**os.environ, **QUIET}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.peers._child", json.dumps(job)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout + GRACE_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return {"ok": False, "timed_out": True, "error": f"killed after {timeout + GRACE_S} s", "seconds": None,
                "maxrss_kb": None, "wall_s": time.perf_counter() - started, "load_1m": load}
    lines = out.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        tail = [line for line in err.strip().splitlines() if line.strip()]
        result = {"ok": False, "error": f"child exited {proc.returncode}: {tail[-1] if tail else 'no output'}"[:400],
                  "seconds": None, "maxrss_kb": None}
    result.update(wall_s=time.perf_counter() - started, load_1m=load)
    return result


def end_sessions(conninfo: str) -> None:
    """After a timeout the server may still be executing the killed client's statement: end it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                     " WHERE datname = current_database() AND pid <> pg_backend_pid()")


def _job(run: PeerRun, peer: registry.Peer, step: str, server: target.Server, data_path: Path,
         chain: str) -> dict[str, Any]:
    options = dict(peer.options)
    options["pipelines_dir"] = str(run.bench.workdir / f"dlt-{peer.key}-{chain}")
    return {"loader": peer.loader, "peer": peer.key, "step": step, "file": str(data_path), "db": server.job(),
            "options": options, "workdir": str(run.bench.workdir / f"{peer.key}-{chain}"), "timeout": run.timeout,
            "rows": run.rows, "sample": run.sample}


def _prepare(run: PeerRun, peer: registry.Peer, server: target.Server, chain: str) -> str | None:
    """The untimed target set-up of registry.Peer.target; returns an error line if it failed."""
    if peer.target == "naive":
        target.create_naive_target(server.conninfo)
    elif peer.target == "seeded":
        seeded = child(_job(run, peer, "seed", server, seed_file(run.bench.workdir), chain), run.timeout)
        if not seeded["ok"]:
            return f"seed load failed: {seeded['error']}"
        target.add_keys(server.conninfo)
    return None


def _expected(run: PeerRun, peer: registry.Peer, step: str, result: dict[str, Any]) -> tuple[int, int]:
    """(rows, revised rows) the target must hold after a successful step."""
    if peer.sampled:
        sent, new = result.get("rows_sent", 0), result.get("sample_new", 0)
        return (run.rows + new, sent - new) if step == "incremental" else (min(run.sample, run.rows), 0)
    inc = run.files["incremental"].expect
    return (run.rows + inc["inserted"], inc["updated"]) if step == "incremental" else (run.rows, 0)


def _outcome(run: PeerRun, peer: registry.Peer, step: str, result: dict[str, Any], state: dict[str, Any],
             before: dict[str, Any] | None) -> str:
    dups = state["rows"] - state["distinct_keys"]
    failed = "" if result["ok"] else f"FAILED: {result['error']}"
    if step == "again":
        idem = result["idempotent"] = bool(before and state["rows"] == before["rows"] and dups == 0)
        verdict = f"idempotent: {'yes' if idem else 'NO'} ({state['rows']:,} rows, {dups:,} duplicate keys)"
        return verdict + (f"; load {'timed out' if result.get('timed_out') else 'failed'}: {result['error']}"
                          if not result["ok"] else "")
    if step == "dirty":
        kept = f"{state['bad_as_is']:,} bad rows kept as-is"
        if not result["ok"]:
            how = "timed out" if result.get("timed_out") else "aborted"
            return f"{how}, {state['rows']:,} rows landed ({kept}): {result['error']}"
        refused = run.files["dirty"].rows - state["rows"]
        return f"loaded {state['rows']:,} rows: {kept}, {refused:,} refused" + (
            f" ({result['tool_errors']:,} errors logged; first: {result['tool_first_error']})"
            if result.get("tool_errors") else "")
    if failed:
        return failed
    rows, revised = _expected(run, peer, step, result)
    result["correct"] = state["rows"] == rows and state["revised"] == revised and dups == 0
    if result["correct"]:
        return "ok" + (f" (sample of {result['rows_sent']:,} rows)" if peer.sampled else "")
    return (f"WRONG: {state['rows']:,} rows / {state['revised']:,} updated / {dups:,} duplicate keys, expected "
            f"{rows:,} / {revised:,} / 0")


def _step(run: PeerRun, peer: registry.Peer, step: str, server: target.Server, variant: str, chain: str,
          before: dict[str, Any] | None) -> dict[str, Any]:
    data = run.files[variant]
    if peer.sampled and step == "incremental":
        target.copy_clean(server.conninfo, run.files["clean"].path)   # the state bare_sql_incremental starts from
    scenarios.settle(server.conninfo)
    result = child(_job(run, peer, step, server, data.path, chain), run.timeout)
    if result.get("timed_out"):
        end_sessions(server.conninfo)
    state = target.inspect(server.conninfo)
    result.update(round=run.round, peer=peer.key, label=peer.label, step=step, file=variant, file_rows=data.rows, target=state,
                  sampled=peer.sampled, upserts=peer.upserts)
    result["outcome"] = _outcome(run, peer, step, result, state, before)
    run.steps.append(result)
    rss = f"{result['maxrss_kb'] / 1024:6.0f} MB" if result.get("maxrss_kb") else "     - MB"
    secs = f"{result['seconds']:8.2f} s" if result.get("seconds") is not None else "       - s"
    print(f"  [{run.round + 1}] {peer.key:<22} {step:<12} {secs} {rss}  {result['outcome']}", file=sys.stderr, flush=True)
    return state


def skip(run: PeerRun, peer: registry.Peer, steps: list[str], why: str) -> None:
    for step in steps:
        run.steps.append({"peer": peer.key, "label": peer.label, "step": step, "ok": False, "skipped": True,
                          "seconds": None, "maxrss_kb": None, "outcome": f"not run: {why}", "sampled": peer.sampled,
                          "upserts": peer.upserts, "file_rows": run.files[_variant(step)].rows})


def _variant(step: str) -> str:
    return {"initial": "clean", "again": "clean", "incremental": "incremental", "dirty": "dirty"}[step]


def run_peer(run: PeerRun, peer: registry.Peer) -> None:
    main: list[str] = [s for s in ("initial", "again", "incremental") if s in peer.steps]
    with run.bench.database(peer.key) as conninfo:
        server = target.Server.of(conninfo)
        problem = _prepare(run, peer, server, "main")
        if problem:
            skip(run, peer, main, problem)
        else:
            state = None
            for step in main:
                state = _step(run, peer, step, server, _variant(step), "main", state)
    if "dirty" in peer.steps:
        with run.bench.database(f"{peer.key}_dirty") as conninfo:
            server = target.Server.of(conninfo)
            problem = _prepare(run, peer, server, "dirty")
            if problem:
                skip(run, peer, ["dirty"], problem)
            else:
                _step(run, peer, "dirty", server, "dirty", "dirty", None)
