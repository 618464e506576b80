"""`pgstage migrate SPEC [--plan | --apply | --rollback ID]`: evolve the target from spec changes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from pgstage.cli import render as output
from pgstage.cli.run import DbOption, JsonOption
from pgstage.errors import UsageError

if TYPE_CHECKING:
    from pgstage.migrate import MigrationPlan


def migrate_command(
    spec: Annotated[Path, typer.Argument(help="The pipeline spec (TOML) the target should match.", show_default=False)],
    plan: Annotated[bool, typer.Option("--plan", help="Print the steps with their SQL, lock and rows (the default).")] = False,
    apply: Annotated[bool, typer.Option("--apply", help="Run the steps; re-running resumes a crashed apply.")] = False,
    rollback: Annotated[Optional[int], typer.Option("--rollback", help="Undo the applied migration ID (see pgstage.migrations).", show_default=False)] = None,
    drop_removed: Annotated[bool, typer.Option("--drop-removed", help="Drop columns the spec no longer has (kept by default).")] = False,
    batch_rows: Annotated[int, typer.Option("--batch-rows", min=1, help="About how many rows each backfill transaction updates.")] = 10_000,
    pause: Annotated[float, typer.Option("--pause", min=0.0, help="Seconds to pause between backfill batches (throttle).")] = 0.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Plan, apply or roll back the safe migration of a target to its spec."""
    # Imported inside the command: the CLI's start-up does not pay for it unless it runs (docs/performance.md).
    from pgstage import migrate

    if sum((plan, apply, rollback is not None)) > 1:
        raise UsageError("give one of --plan, --apply and --rollback ID")
    if rollback is not None:
        undone = migrate.rollback(spec, rollback, db=db)
        if as_json:
            output.print_json(undone.__dict__)
        else:
            output.console.print(f"rolled back migration {undone.migration_id}: {undone.summary}", markup=False, soft_wrap=True)
    elif apply:
        report = migrate.apply(spec, db=db, drop_removed=drop_removed, batch_rows=batch_rows, pause_s=pause)
        if as_json:
            output.print_json(report.as_dict())
            return
        for done in report.applied:
            output.console.print(f"migration {done.migration_id}: {done.summary} ({done.steps} steps"
                                 + (f", {done.rows_written:,} rows written" if done.rows_written else "") + ")",
                                 markup=False, soft_wrap=True)
        if not report.applied:
            output.console.print("nothing to migrate: the target matches the spec", markup=False, soft_wrap=True)
        output.console.print("post-checks: " + "; ".join(report.checks), markup=False, soft_wrap=True)
    else:
        found = migrate.plan(spec, db=db, drop_removed=drop_removed)
        output.print_json(found.as_dict()) if as_json else output.console.print(render(found), markup=False, soft_wrap=True)


def render(plan: MigrationPlan) -> str:
    """The plan as text: each change, each step with its SQL, its lock and the rows it touches."""
    lines = [f"target {plan.target} (about {plan.rows:,} rows)"]
    if not plan.changes and not plan.refused:
        lines.append("nothing to migrate: the target matches the spec")
    for number, change in enumerate(plan.changes, 1):
        resumed = f" (resumes migration {change.migration_id})" if change.migration_id else ""
        lines.append(f"\n{number}. {change.summary}{resumed}")
        if change.note:
            lines.append(f"   note: {change.note}")
        for i, step in enumerate(change.steps):
            shown = step.backfill.shown() if step.backfill else step.statement
            done = "  [done]" if i < change.resumed_at else ""
            batched = ", in batches of heap pages" if step.backfill else ""
            lines.append(f"   - {step.what}{done}\n     lock: {step.lock}; rows: ~{step.rows:,}{batched}"
                         + (f"\n     {shown.as_string()}" if shown is not None else ""))
        if change.actionable:
            undo = ("cannot be undone" if change.rollback is None else
                    "; ".join(s.statement.as_string() for s in change.rollback if s.statement is not None))
            lines.append(f"   rollback: {undo}")
    for problem in plan.refused:
        lines.append(f"\nnot planned: {problem}")
    return "\n".join(lines)
