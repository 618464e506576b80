"""`pgstage backfill SPEC... --from --to`: every (spec, day) unit, in parallel, resumable, shareable."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape

from pgstage.cli import render
from pgstage.cli._errors import err_console
from pgstage.cli.run import DbOption, JsonOption
from pgstage.errors import ExitStatus

if TYPE_CHECKING:
    from pgstage.backfill import BackfillReport, Progress


def backfill_command(
    specs: Annotated[Optional[list[Path]], typer.Argument(help="Pipeline specs whose source.path holds {date}.", show_default=False)] = None,
    start: Annotated[Optional[str], typer.Option("--from", help="First day (YYYY-MM-DD).", show_default=False)] = None,
    end: Annotated[Optional[str], typer.Option("--to", help="Last day (YYYY-MM-DD), included.", show_default=False)] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Units run at once by this process.")] = 1,
    deadline: Annotated[Optional[str], typer.Option("--deadline", help="HH:MM (next occurrence) or a date-time: warn when the forecast passes it.", show_default=False)] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Load the most recent days first.")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Run the units that failed before once more.")] = False,
    join: Annotated[Optional[int], typer.Option("--join", help="Take units from backfill ID (another process or machine started it).", show_default=False)] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Load every day of a range for every spec, in parallel, resuming what a killed or failed backfill left."""
    from pgstage.backfill import backfill
    from pgstage.backfill.forecast import parse_deadline

    due = parse_deadline(deadline, datetime.now().astimezone()) if deadline else None
    line = _ProgressLine(enabled=sys.stderr.isatty() and not as_json, jobs=jobs)
    try:
        report = backfill(specs or (), start=start, end=end, jobs=jobs, newest_first=newest_first,
                          retry_failed=retry_failed, join=join, deadline=due, db=db, on_progress=line.update)
    finally:
        line.close()
    if as_json:
        render.print_json(report.as_dict())
    else:
        _summary(report)
    if report.failed:
        raise typer.Exit(ExitStatus.FAILED)


class _ProgressLine:
    """One overall line on a terminal, rewritten in place; a late forecast is printed once, above it."""

    def __init__(self, *, enabled: bool, jobs: int) -> None:
        self.enabled, self.jobs, self.late, self.shown = enabled, jobs, False, False

    def update(self, p: Progress) -> None:
        fc = p.forecast
        if fc.late and not self.late and (warning := fc.warning(self.jobs)):
            self._clear()
            err_console.print(f"[yellow]warning:[/] {escape(warning)}")
        self.late = fc.late
        if not self.enabled:
            return
        eta = f", ETA {fc.finish:%H:%M} ({fc.eta_s / 60:.0f} min)" if fc.finish and fc.eta_s is not None else ""
        text = (f"units {p.done:,}/{p.total:,}" + (f" ({p.failed:,} failed)" if p.failed else "")
                + f", {p.records:,} records, {p.records_per_s:,.0f} records/s{eta}")
        sys.stderr.write("\r\x1b[2K" + text)
        sys.stderr.flush()
        self.shown = True

    def _clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _summary(rep: BackfillReport) -> None:
    u = rep.units
    render.console.print(f"backfill {rep.backfill_id}" + (" (resumed)" if rep.resumed else "")
                         + f": {', '.join(rep.pipelines)} from {rep.first_day} to {rep.last_day}", markup=False)
    render.console.print(f"units: {u.get('succeeded', 0):,} succeeded, {u.get('skipped', 0):,} skipped, "
                         f"{u.get('failed', 0):,} failed, {u.get('pending', 0):,} pending", markup=False)
    render.console.print("rows: " + ", ".join(f"{k} {getattr(rep.counts, k):,}" for k in (*render.COUNT_KEYS, "deleted")),
                         markup=False)
    rate = f", {rep.records / rep.duration_s:,.0f} records/s" if rep.duration_s > 0 and rep.records else ""
    render.console.print(f"{rep.records:,} records in {rep.duration_s:.1f}s with --jobs {rep.jobs}{rate}", markup=False)
    if rep.indexes_dropped:
        render.console.print(f"indexes dropped for the backfill: {', '.join(rep.indexes_dropped)}", markup=False)
    if rep.indexes_rebuilt:
        render.console.print(f"indexes rebuilt at its end: {', '.join(rep.indexes_rebuilt)}", markup=False)
    for w in rep.warnings:
        render.console.print(f"warning: {w}", markup=False)
    for f in rep.failures:
        render.console.print(f"[red]failed[/] {escape(f['pipeline'])} {f['partition']} (exit {f['exit_code']}"
                             + (f", run {f['run_id']}" if f["run_id"] else "") + f"): {escape(f['message'] or '')}")
    if rep.failures:
        render.console.print(f"re-run the failed units with `pgstage backfill ... --retry-failed`"
                             f" (or `pgstage backfill --join {rep.backfill_id} --retry-failed`)", markup=False)
