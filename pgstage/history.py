"""Reading the ledger back: what `pgstage runs` and `pgstage show` display."""

from __future__ import annotations

from typing import Any

from pgstage.db import connect, resolve_url
from pgstage.errors import UsageError
from pgstage.pipeline import chunks, ledger
from pgstage.throttle import run_pauses


def recent_runs(*, db: str | None = None, pipeline: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        return ledger.list_runs(conn, limit=limit, pipeline=pipeline)


def run_details(run_id: int, *, db: str | None = None, samples: int = 10) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One run's ledger row, its batches, pauses and merge chunks, and a few of its rejects."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        run = ledger.get_run(conn, run_id)
        if run is None:
            raise UsageError(f"there is no run {run_id} in this database", hint="`pgstage runs` lists the runs")
        run["batches"] = ledger.run_batches(conn, run_id)
        run["pauses"] = run_pauses(conn, run_id)
        run["chunks"] = chunks.run_chunks(conn, run_id)
        return run, ledger.sample_rejects(conn, run_id, samples)
