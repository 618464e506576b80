"""The one place that turns failures into messages and exit statuses (SPEC §6).

Every command of the `pgstage` app runs inside `exits()`, through the app's group class
(`ExitMapping`), so no command catches errors itself: a command raises, this maps.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from pgstage.errors import ExitStatus, PgstageError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("PGSTAGE_DEBUG") == "1"


@contextmanager
def exits() -> Iterator[None]:
    """Print a PgstageError as one or two readable sentences and exit with its status; never a bare traceback."""
    try:
        yield
    except PgstageError as exc:
        if debug_enabled():
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(ExitStatus.INTERRUPTED) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug: say so, keep it short unless PGSTAGE_DEBUG=1
        if _usage_error(exc):
            raise   # click's own (a bad option, exit 2): click shows it
        if debug_enabled():
            traceback.print_exc()
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
                          "  hint: this is a bug in pgstage; rerun with PGSTAGE_DEBUG=1 for the traceback and report it")
        raise typer.Exit(ExitStatus.FAILED) from None


def _usage_error(exc: Exception) -> bool:
    """click's ClickException (typer vendors click in newer versions, so no import names it)."""
    return hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int)


class ExitMapping(TyperGroup):
    """The app's group: whichever command (or subcommand) runs, it runs inside `exits()`."""

    def invoke(self, ctx: Any) -> Any:
        with exits():
            return super().invoke(ctx)
