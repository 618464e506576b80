"""The one place that turns failures into messages and exit codes (SPEC §6)."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from pgstage.errors import PgstageError

T = TypeVar("T")
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("PGSTAGE_DEBUG") == "1"


@contextmanager
def exits() -> Iterator[None]:
    """Print a PgstageError as one or two readable sentences and exit with its code; never a bare traceback."""
    try:
        yield
    except PgstageError as exc:
        if debug_enabled():
            traceback.print_exc()
        err_console.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("interrupted")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:  # a bug: say so, keep it short unless --debug
        if debug_enabled():
            traceback.print_exc()
        err_console.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}\n"
                          "  hint: this is a bug in pgstage; rerun with PGSTAGE_DEBUG=1 for the traceback and report it")
        raise typer.Exit(1) from None


def guarded(func: Callable[[], T]) -> T:
    with exits():
        return func()
    raise AssertionError("unreachable")  # pragma: no cover


def die(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}")
    sys.exit(code)
