"""pgstage: load files into PostgreSQL fast and safely.

The public API is what this module exports; everything else may change.

Every name is imported when first used, not with the package: `pgstage run` of an
already-loaded file must not pay for the whole pipeline's imports (issue #18,
docs/performance.md). `run` and `backfill` are both a submodule and the function users
call; the package's class keeps the function under the name even after the import system
binds the submodule there (see `_Package`).
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pgstage.backfill import BackfillReport, backfill
    from pgstage.catalog import TableDescription, describe_table
    from pgstage.db import connection_env
    from pgstage.errors import (
        AnomalyBlocked,
        DatabaseError,
        ExitStatus,
        HeaderMismatch,
        MissingDependency,
        PgstageError,
        PipelineLocked,
        RejectLimitExceeded,
        SourceError,
        SpecError,
        TargetMismatch,
        UntrustedIndexDefinition,
        UsageError,
    )
    from pgstage.ops.alerts import Notice, notify
    from pgstage.report import Counts, FileReport, RunReport
    from pgstage.run import run
    from pgstage.spec import Spec, load_spec, parse_spec

# Each public name and the module it comes from.
_SOURCES = {
    "BackfillReport": "pgstage.backfill", "backfill": "pgstage.backfill",
    "TableDescription": "pgstage.catalog", "describe_table": "pgstage.catalog",
    "connection_env": "pgstage.db",
    **dict.fromkeys(("AnomalyBlocked", "DatabaseError", "ExitStatus", "HeaderMismatch", "MissingDependency", "PgstageError",
                     "PipelineLocked", "RejectLimitExceeded", "SourceError", "SpecError", "TargetMismatch",
                     "UntrustedIndexDefinition", "UsageError"), "pgstage.errors"),
    "Notice": "pgstage.ops.alerts", "notify": "pgstage.ops.alerts",
    "Counts": "pgstage.report", "FileReport": "pgstage.report", "RunReport": "pgstage.report",
    "run": "pgstage.run",
    "Spec": "pgstage.spec", "load_spec": "pgstage.spec", "parse_spec": "pgstage.spec",
}

__all__ = [
    "AnomalyBlocked", "BackfillReport", "Counts", "DatabaseError", "ExitStatus", "FileReport", "HeaderMismatch", "MissingDependency", "PgstageError", "PipelineLocked",
    "RejectLimitExceeded", "RunReport", "SourceError", "Spec", "SpecError", "TargetMismatch", "UntrustedIndexDefinition", "UsageError",
    "backfill", "load_spec", "parse_spec", "run",
    "TableDescription", "connection_env", "describe_table",
    "Notice", "notify",
]


def __getattr__(name: str) -> Any:
    """A public name's first use imports its module (PEP 562); later uses find it in the package."""
    source = _SOURCES.get(name)
    if source is None:
        raise AttributeError(f"module 'pgstage' has no attribute {name!r}")
    value = getattr(import_module(source), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_ASSIGNED: dict[str, Any] = {}   # `pgstage.run = something` by a caller (a test's monkeypatch): kept and returned


def _function_of(module: str, name: str) -> property:
    """The package attribute `name`: the function `module.name`, never the submodule.

    Importing a submodule sets it as an attribute of its package (`pgstage.run = <module>`);
    with eager imports the function was bound after that and won. Lazily, the submodule may be
    imported later (by the CLI, or by `pgstage.backfill` importing `pgstage.run`), so that one
    binding is ignored and `pgstage.run(...)` / `from pgstage import run` stay the function;
    anything else assigned to the name is kept, as on a plain module.
    """
    def get(_: types.ModuleType) -> Any:
        return _ASSIGNED[name] if name in _ASSIGNED else getattr(import_module(module), name)

    def assign(_: types.ModuleType, value: Any) -> None:
        if not (isinstance(value, types.ModuleType) and value.__name__ == module):
            _ASSIGNED[name] = value

    return property(get, assign)


class _Package(types.ModuleType):
    run = _function_of("pgstage.run", "run")
    backfill = _function_of("pgstage.backfill", "backfill")


sys.modules[__name__].__class__ = _Package
