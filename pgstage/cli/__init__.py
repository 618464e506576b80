"""The `pgstage` command: thin typer commands, each calling one library function."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    import typer

# Each command: its name, the module under pgstage.cli and the function. Listed once, so that the
# full app and the one-command app of `main()` cannot differ.
COMMANDS = (
    ("run", "run", "run_command"),
    ("backfill", "backfill", "backfill_command"),
    ("repair", "run", "repair_command"),
    ("runs", "runs", "runs_command"),
    ("show", "runs", "show_command"),
    ("demo", "demo", "demo_command"),
    ("init", "init", "init_command"),
    ("rejects", "rejects", "rejects_command"),
    ("report", "report", "report_command"),
    ("anomalies", "ops", "anomalies_command"),
    ("reconcile", "ops", "reconcile_command"),
    ("migrate", "migrate", "migrate_command"),
    ("reprocess", "reprocess", "reprocess_command"),
)
GROUPS = (("db", "db"),)   # command groups: name, module (its `app`)
# The library module a command calls, for the commands whose start-up `main()` pays for with the collector off
# (each command imports its own inside its body too, for the full app and for tests).
LIBRARY = {"run": "pgstage.run", "backfill": "pgstage.backfill"}


def build(only: str | None = None) -> typer.Typer:
    """The app with every command, or with the one named `only` (its module alone is imported)."""
    import typer   # here, not at the top: `main()` imports typer and rich with the collector off

    from pgstage.cli._errors import ExitMapping

    app = typer.Typer(
        name="pgstage",
        help="Load files into PostgreSQL fast and safely: stage, validate, deduplicate, merge, account for every row.",
        pretty_exceptions_show_locals=False,  # locals hold connection URLs
        no_args_is_help=True,
        add_completion=False,
        cls=ExitMapping,   # every command's errors become exit statuses in one place
    )
    for name, module, function in COMMANDS:
        if only in (None, name):
            app.command(name)(getattr(import_module(f"pgstage.cli.{module}"), function))
    for name, module in GROUPS:
        if only in (None, name):
            app.add_typer(import_module(f"pgstage.cli.{module}").app, name=name)
    if only is not None:
        app.callback()(_group)   # a group of one command, not the command itself: `pgstage run SPEC` keeps its usage
    return app


def _group() -> None:
    pass


if TYPE_CHECKING:
    app: typer.Typer   # the full app, built at its first use (see __getattr__)


def __getattr__(name: str) -> Any:
    """`pgstage.cli.app` is built when first asked for: `main()` may need one command only."""
    if name != "app":
        raise AttributeError(f"module 'pgstage.cli' has no attribute {name!r}")
    full = globals()["app"] = build()
    return full


def main() -> None:
    """The command line, as the console script runs it (see `console()` for how it ends). A known command name first builds the app of that command only: typer reads
    every command's signature (and we import every command's module) to build the full group, which a
    `pgstage run` from the shell need not pay for (issue #18); `pgstage --help` and anything else get
    the full app."""
    name = sys.argv[1] if len(sys.argv) > 1 else None
    known = {c[0] for c in COMMANDS} | {g[0] for g in GROUPS}
    with _starting():
        app = build(name) if name in known else build()
        if name in LIBRARY and "--help" not in sys.argv[2:]:
            import_module(LIBRARY[name])
    app()


def console() -> NoReturn:
    """The `pgstage` console script (and `python -m pgstage.cli`): `main()`, then `leave()` with its status."""
    try:
        main()   # click's standalone mode ends in SystemExit with the command's status
    except SystemExit as done:
        leave(done.code)
    leave(0)


def leave(code: Any) -> NoReturn:
    """End the process as Python would, without its teardown, once there is nothing left to wait for.

    Python's own exit frees every object one at a time, module by module (the ~90,000 objects of the
    imports included: `gc.freeze()` spares them the collector, not the deallocation): 15–30 ms at a
    1-minute load of 5 after the report is printed, which a user timing `pgstage run` from the shell
    waits for (docs/performance.md, "The console script's own cost, h18r"). What the exit must
    still do is done here, in Python's order: the atexit handlers (an embedded server started with
    `cleanup_mode="stop"` stops in one), then stdout and stderr flushed, then the status. When
    another thread is alive (Python would wait for it), the status is not an int (Python prints it), or
    a flush fails (Python reports the broken pipe with its own status), the normal exit takes over.
    """
    status = 0 if code is None else code
    if not isinstance(status, int) or isinstance(status, bool) or threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()   # runs each handler once and unregisters it: a fallback below cannot run them twice
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        raise SystemExit(code) from None
    os._exit(status & 0xFF)


@contextmanager
def _starting() -> Iterator[None]:
    """The collector off while the CLI and its command's library are imported, then those objects frozen.

    The imports allocate some 90,000 objects that live as long as the process (classes, pydantic's
    schemas, psycopg's adapters), and nothing else happens meanwhile: at the default threshold (700)
    the collector ran over them dozens of times, and once more at the interpreter's exit. Frozen
    (`gc.freeze()`, the permanent generation), no collection walks them again, the one at exit
    included; the collector is back on, at its usual thresholds, before the command does anything,
    so a long run or backfill collects its own garbage as any program does. Some hundreds of objects
    that were already garbage during the imports are frozen with them: kept, never freed. A no-op
    `pgstage run` took ~100 ms less CPU this way (393 → 293 ms at load 1.5; docs/performance.md, "The
    no-op run, after h18n"). The library's users (`import pgstage`) are left alone: only the console
    script does this.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
