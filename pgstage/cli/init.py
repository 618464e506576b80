"""`pgstage init SAMPLE_FILE`: draft a pipeline spec from a sample file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pgstage.cli import render
from pgstage.cli.run import DbOption
from pgstage.errors import UsageError

# What people type for a tab on a command line.
_TAB_SPELLINGS = {"\\t": "\t", "tab": "\t", "TAB": "\t"}


def init_command(
    sample: Annotated[Path, typer.Argument(help="A sample of the source (CSV, any of , ; TAB |).", show_default=False)],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the spec here instead of printing it.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --output if it exists.")] = False,
    name: Annotated[Optional[str], typer.Option("--name", help="Pipeline name (default: the file's stem).")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="schema.table (default: public.<stem>).")] = None,
    delimiter: Annotated[Optional[str], typer.Option("--delimiter", help="Field delimiter (default: sniffed from the header).")] = None,
    encoding: Annotated[str, typer.Option("--encoding", help="The file's encoding.")] = "utf-8",
    sample_rows: Annotated[int, typer.Option("--sample-rows", min=1, help="Records to sample from the start of the file.")] = 10_000,
    db: DbOption = None,
) -> None:
    """Draft a commented spec from a sample file: PostgreSQL decides each column's type, required flags and key."""
    if output is not None and output.exists() and not force:
        raise UsageError(f"{output} already exists", hint="pass --force to overwrite it, or choose another --output")
    # Imported inside the command: the CLI's start-up does not pay for it unless it runs (docs/performance.md).
    from pgstage.init import draft_spec

    text = draft_spec(sample, db=db, name=name, target=target, sample_rows=sample_rows,
                      delimiter=_TAB_SPELLINGS.get(delimiter, delimiter) if delimiter else None,
                      encoding=encoding, output=output)
    if output is None:
        typer.echo(text, nl=False)  # plain: rich would read `[pipeline]` as markup
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror}", hint="choose a writable --output path") from None
    render.console.print(f"wrote {output}: review the types and the key, then `pgstage run {output}`",
                         markup=False)
