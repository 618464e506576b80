"""`pgstage rejects RUN_ID`: a run's rejected records, on screen or exported for fixing and reloading."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table
from rich.text import Text

from pgstage.cli import render
from pgstage.cli.run import DbOption, JsonOption
if TYPE_CHECKING:
    from pgstage.rejects import RejectRow


def rejects_command(
    run_id: Annotated[int, typer.Argument(help="A run id from `pgstage runs`.", show_default=False)],
    rule: Annotated[Optional[str], typer.Option("--rule", help="Only rejects failing this rule: column.rule, a bare rule (min) or parse.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", min=0, help="At most this many rejects, by file and record.")] = None,
    export: Annotated[Optional[Path], typer.Option("--export", help="Write them to FILE (.csv loadable by the spec, or .jsonl).")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show a run's rejects (record number, every reason, the raw values), or export them to fix and reload."""
    from pgstage.rejects import export_rejects, list_rejects, reject_rules

    if export is not None:
        written = export_rejects(run_id, export, db=db, rule=rule, limit=limit)
        if as_json:
            render.print_json({"run_id": run_id, "export": str(export), "rejects": written})
        else:
            render.console.print(f"wrote {written:,} reject(s) of run {run_id} to {export}", markup=False)
        return
    rows = list_rejects(run_id, db=db, rule=rule, limit=limit)
    if as_json:
        render.print_json([row.as_dict() for row in rows])
    elif rows:
        rejects_table(rows)
    else:
        rules = reject_rules(run_id, db=db) if rule else {}
        render.console.print(f"run {run_id}: no rejects" + (f" match rule {rule!r}" if rule else "")
                             + (f" (rules in this run: {', '.join(rules)})" if rules else ""), markup=False)


def raw_text(row: RejectRow) -> str:
    """The raw values as `Field=value, ...`, or the record's text when COPY could not read it."""
    if row.unreadable:
        return row.raw.get("_record") or ""
    return ", ".join(f"{name}={'' if value is None else value}" for name, value in row.raw.items())


def rejects_table(rows: list[RejectRow]) -> None:
    """Record number, reasons, raw values; the file too when the rejects come from several."""
    several = len({row.file for row in rows}) > 1
    table = Table(show_edge=False)
    if several:
        table.add_column("file")
    table.add_column("record", justify="right")
    table.add_column("reasons")
    table.add_column("raw values")
    for row in rows:
        cells = [Text(str(row.record)), Text("; ".join(str(r) for r in row.reasons)), Text(raw_text(row))]
        table.add_row(*([Text(row.file)] if several else []), *cells)
    render.console.print(table)
