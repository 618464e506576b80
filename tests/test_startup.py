"""The command line's start-up: `pgstage run` pays only for what a run needs (issue #18, docs/performance.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import Loader

# Imported by the commands that use them, never by `import pgstage.cli`: the HTML report and its
# charts (pygal), the demo, init's type inference, migrate, reconcile, and structlog (a console
# run logs nothing unless something is wrong).
HEAVY = ("pygal", "pgstage.htmlreport", "pgstage.demo", "pgstage.init", "pgstage.migrate",
         "pgstage.ops.reconcile", "structlog")


# Nor by a cold import of the package or of the CLI: the database driver, the spec models, the pipeline and
# every command's library module are imported by the command that runs (issue #18: `pgstage --help`,
# `pgstage db url` pay for none of them).
LIBRARY = ("psycopg", "pydantic", "tenacity", "pgstage.spec", "pgstage.run", "pgstage.backfill", "pgstage.pipeline",
           "pgstage.db", "pgstage.reprocess", "pgstage.history", "pgstage.rejects", "pgstage.repair", "rich.progress")

# What a run of files loaded before does not need: the other commands, the backfill, the progress bar (no file
# to draw), the HTTP client of alerts (no alert to send), structlog (nothing logged at the console's level).
NOT_FOR_A_SKIPPED_RUN = (*HEAVY, "pgstage.backfill", "pgstage.reprocess", "pgstage.history", "pgstage.rejects",
                         "pgstage.repair", "pgstage.cli.backfill", "pgstage.cli.demo", "pgstage.cli.ops",
                         "pgstage.cli.rejects", "pgstage.cli.db", "pgstage.cli._bar", "rich.progress",
                         "urllib.request", "http.client")

# Nor the pipeline's steps past the ledger (issue #18): it resolves the files and their fingerprints, checks the
# types, the target and the references, finds every file in the ledger and stops. No staging or extract reader, no
# validation, no merge strategy (not even for its own target's check, for keyed strategies), no pool, no throttle.
PIPELINE = ("pgstage.pipeline.stage", "pgstage.pipeline.two_streams", "pgstage.pipeline.validate",
            "pgstage.pipeline.known", "pgstage.pipeline.partition", "pgstage.pipeline._cast_first",
            "pgstage.pipeline._quarantine", "pgstage.pipeline._screen", "pgstage.pipeline.merge.keyed",
            "pgstage.pipeline.merge.append", "pgstage.pipeline.merge.scd2", "pgstage.pipeline.merge.replace_partition",
            "pgstage.pipeline.extract.csv", "pgstage.pipeline.extract.jsonl", "pgstage.pipeline.extract.parquet",
            "pgstage.pipeline.extract.postgres", "pgstage.ops.anomalies", "pgstage.ops.paused", "pgstage.throttle",
            "pgstage.workers")


def imported_after(code: str, modules: tuple[str, ...] = HEAVY) -> list[str]:
    probe = f"import sys; {code}; print(sorted(m for m in {modules!r} if m in sys.modules))"
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


def test_importing_the_package_or_the_cli_loads_no_library_module() -> None:
    assert imported_after("import pgstage", LIBRARY) == []
    assert imported_after("import pgstage.cli", LIBRARY) == []
    assert imported_after("import pgstage.cli; pgstage.cli.app(['--help'], standalone_mode=False)", LIBRARY) == []


def test_a_public_name_imports_its_own_module_only() -> None:
    assert imported_after("from pgstage import SpecError, Counts", LIBRARY) == []
    assert imported_after("from pgstage import load_spec", ("pgstage.spec", "pydantic", "pgstage.run")) == [
        "pgstage.spec", "pydantic"]


def test_run_and_backfill_stay_the_functions_whatever_imports_their_modules() -> None:
    """Each is a submodule too: importing it binds the module on the package, which must not win."""
    code = ("import pgstage, pgstage.run, pgstage.backfill.queue; from pgstage import run, backfill; "
            "import pgstage.run as also; import pgstage.backfill as too; "
            "print(json.dumps([f.__module__ + '.' + f.__name__ for f in (pgstage.run, pgstage.backfill, run, backfill, "
            "also, too)] + [type(sys.modules[m]).__name__ for m in ('pgstage.run', 'pgstage.backfill')]))")
    out = subprocess.run([sys.executable, "-c", f"import json, sys; {code}"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == ["pgstage.run.run", "pgstage.backfill.backfill"] * 3 + ["module", "module"]


def test_run_can_still_be_replaced_by_assignment(monkeypatch: pytest.MonkeyPatch) -> None:
    import pgstage
    from pgstage.run import run

    def fake(*args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(pgstage, "run", fake)
    assert pgstage.run is fake
    monkeypatch.undo()
    assert pgstage.run is run


def test_an_unknown_public_name_is_an_attribute_error() -> None:
    import pgstage

    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        pgstage.nothing_here  # noqa: B018


SPEC = """\
[pipeline]
name = "startup"
target = "public.startup"
key = ["id"]

[source]
path = "rows.csv"

[columns]
id   = { from = "id", type = "bigint", required = true }
name = { from = "name", type = "text" }
"""


def test_a_run_of_a_loaded_file_from_the_shell_imports_only_what_it_needs(
        loader: Loader, sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    loader.write("rows.csv", "id,name\n1,a\n2,b\n")
    spec = loader.spec(SPEC)
    assert loader.run(spec).counts.inserted == 2
    # The console script's own path: main() with the arguments a shell gives it, in a fresh interpreter.
    printed = skipped_run(spec, loader.db_url, (*NOT_FOR_A_SKIPPED_RUN, *PIPELINE))
    assert printed[-1] == "[] 0"
    assert "skipped into public.startup" in "\n".join(printed)
    assert "every file was loaded before" in "\n".join(printed)
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id") == [("succeeded",), ("skipped",)]
    assert sql("SELECT id, name FROM public.startup ORDER BY id") == [(1, "a"), (2, "b")]


def skipped_run(spec: Path, db_url: str, modules: tuple[str, ...], env: dict[str, str] | None = None) -> list[str]:
    """The console script's own path: main() with the arguments a shell gives it, in a fresh interpreter; its
    output, then which of `modules` it imported and its exit status."""
    probe = (f"import sys; sys.argv = ['pgstage', 'run', {str(spec)!r}, '--db', {db_url!r}]\n"
             "import pgstage.cli\ntry:\n    pgstage.cli.main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             f"print(sorted(m for m in {modules!r} if m in sys.modules), code)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(spec).parent,
                          env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return [*proc.stdout.strip().splitlines(), *proc.stderr.strip().splitlines()]


@pytest.mark.parametrize("strategy", ["scd2", "append"])
def test_a_skipped_run_of_another_strategy_imports_its_own_module_only(
        loader: Loader, sql: Callable[..., list[tuple[Any, ...]]], strategy: str) -> None:
    """The target's check reads the strategy's columns: its module, and the keyed code it builds on, nothing else."""
    loader.write("rows.csv", "id,name\n1,a\n2,b\n")
    spec = loader.spec(SPEC.replace('key = ["id"]', f'key = ["id"]\nstrategy = "{strategy}"')
                       if strategy == "scd2" else SPEC.replace('key = ["id"]', 'strategy = "append"'))
    assert loader.run(spec).counts.inserted == 2
    own = {f"pgstage.pipeline.merge.{strategy}", "pgstage.pipeline.merge.keyed"}
    printed = skipped_run(spec, loader.db_url, PIPELINE)
    assert printed[-1] == repr(sorted(own)) + " 0"
    assert sql("SELECT status FROM pgstage.runs ORDER BY run_id") == [("succeeded",), ("skipped",)]


def test_a_skipped_run_checks_the_ledger_in_one_statement(loader: Loader) -> None:
    """The ledger is current after the first run: the next one asks once (`ledger: current?`) instead of creating
    and upgrading it again (two dozen statements and a transaction)."""
    loader.write("rows.csv", "id,name\n1,a\n")
    spec = loader.spec(SPEC)
    loader.run(spec)
    printed = skipped_run(spec, loader.db_url, (), {"PGSTAGE_TRACE_SQL": "1"})
    labels = [m.group(1) for line in printed if (m := re.match(r"-- (.+?): [0-9.]+s, .*, ended at ", line))]
    assert [label for label in labels if label.startswith("ledger: ")] == [
        "ledger: current?", "ledger: orphans", "ledger: finished duplicates", "ledger: fingerprint",
        "ledger: resumable", "ledger: start", "ledger: batch counts", "ledger: finish"]


def test_the_console_script_imports_with_the_collector_off_and_runs_the_command_with_it_on(loader: Loader) -> None:
    """main() freezes what start-up imported and turns the collector back on, at its usual thresholds, before the
    command runs: a long run or backfill collects its garbage. The library alone never touches the collector."""
    loader.write("rows.csv", "id,name\n1,a\n")
    spec = loader.spec(SPEC)
    loader.run(spec)
    probe = (f"import gc, sys; sys.argv = ['pgstage', 'run', {str(spec)!r}, '--db', {loader.db_url!r}]\n"
             "before = (gc.isenabled(), gc.get_threshold(), gc.get_freeze_count())\n"
             "import pgstage.cli, pgstage.run\n"
             "library = (gc.isenabled(), gc.get_freeze_count())\n"
             "seen = []\nmodule = sys.modules['pgstage.run']\nreal = module.run\n"
             "def spy(*args, **kwargs):\n    seen.append((gc.isenabled(), gc.get_threshold()))\n"
             "    return real(*args, **kwargs)\n"
             "module.run = spy\n"
             "try:\n    pgstage.cli.main()\nexcept SystemExit as exc:\n    code = exc.code\n"
             "print(repr((before, library, seen, gc.isenabled(), gc.get_threshold(), gc.get_freeze_count() > 10000,"
             " code)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=Path(spec).parent,
                         check=True).stdout
    before, library, seen, enabled, threshold, frozen, code = eval(out.strip().splitlines()[-1])
    assert before == (True, (700, 10, 10), 0) and library == (True, 0)   # importing the library changes nothing
    assert seen == [(True, (700, 10, 10))]   # the run itself: collector on, usual thresholds
    assert (enabled, threshold, frozen, code) == (True, (700, 10, 10), True, 0)


def test_the_progress_bar_starts_at_the_first_file_and_not_before() -> None:
    code = ("from pgstage.cli.progress import _DeferredBar; bar = _DeferredBar(); "
            "bar('run started', {}); bar('file skipped', {'file': 'a.csv'}); before = bar.progress is None; "
            "import sys; was = 'rich.progress' in sys.modules; "
            "bar('file started', {'file': 'b.csv', 'bytes': 10}); bar('batch staged', {'file': 'b.csv', 'read': 3, 'byte_end': 10}); "
            "tasks = [t.description for t in bar.progress.tasks]; bar.close(); print(repr((before, was, tasks)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out.strip().splitlines()[-1]) == (True, False, ["b.csv · 3 records", "batches merged"])
