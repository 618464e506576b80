"""`pgstage repair`: put back what a killed run may have left behind, without loading anything.

Every run does this itself before it starts; the command is for a target whose pipeline
will not run again soon.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pgstage import indexes
from pgstage.db import connect, resolve_url
from pgstage.pipeline import ledger, stage
from pgstage.spec import Spec, load_spec


@dataclass(frozen=True)
class RepairReport:
    target: str
    rebuilt_indexes: tuple[str, ...]
    dropped_tables: tuple[str, ...]


def repair(spec: Spec | str | Path, *, db: str | None = None) -> RepairReport:
    """Rebuild indexes a killed run dropped, and drop staging tables of runs that are not running."""
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        rebuilt = indexes.rebuild(conn, spec)
        tables = ledger.orphan_tables(conn) + ledger.finished_duplicate_tables(conn)
        for table in tables:
            stage.drop(conn, table)
    return RepairReport(spec.pipeline.target, tuple(rebuilt), tuple(tables))
