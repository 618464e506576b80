"""The command line's start-up: `pgstage run` pays only for what a run needs (issue #18, docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys

# Imported by the commands that use them, never by `import pgstage.cli`: the HTML report and its
# charts (pygal), the demo, init's type inference, migrate, reconcile, and structlog (a console
# run logs nothing unless something is wrong).
HEAVY = ("pygal", "pgstage.htmlreport", "pgstage.demo", "pgstage.init", "pgstage.migrate",
         "pgstage.ops.reconcile", "structlog")


def imported_after(code: str) -> list[str]:
    probe = f"import sys; {code}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    return eval(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_cli_cold_import_leaves_the_heavy_modules_unimported() -> None:
    assert imported_after("import pgstage.cli") == []


def test_the_help_of_run_imports_none_of_them_either() -> None:
    code = "import pgstage.cli; pgstage.cli.app(['run', '--help'], standalone_mode=False)"
    assert imported_after(code) == []


def test_structlog_is_imported_by_the_first_line_that_passes_the_level() -> None:
    filtered = "from pgstage.ops import logs; logs.configure('console', 'warning'); logs.emit('run started')"
    assert imported_after(filtered) == []
    logged = "from pgstage.ops import logs; logs.configure('json', 'info'); logs.emit('run started')"
    assert imported_after(logged) == ["structlog"]
