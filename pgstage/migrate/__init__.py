"""`pgstage migrate`: evolve a target from spec changes, safely (docs/migrations.md).

`plan()` compares the spec with the target and lists each change as steps with their SQL,
lock and rows; `apply()` runs them under the pipeline's lock with lock_timeout on every DDL,
batched backfills and post-checks, recording each in `pgstage.migrations`; `rollback()`
undoes one recorded change where that is possible.
"""

from __future__ import annotations

from pathlib import Path

from pgstage.db import connect, resolve_url
from pgstage.migrate.apply import Applied, MigrationReport, apply_plan, rollback_change
from pgstage.migrate.planner import MigrationPlan, build_plan
from pgstage.spec import Spec, load_spec

__all__ = ["Applied", "MigrationPlan", "MigrationReport", "apply", "plan", "rollback"]


def _spec(spec: Spec | str | Path) -> Spec:
    return spec if isinstance(spec, Spec) else load_spec(spec)


def plan(spec: Spec | str | Path, *, db: str | None = None, drop_removed: bool = False) -> MigrationPlan:
    """What `apply` would do, read-only."""
    loaded = _spec(spec)
    with connect(resolve_url(db)) as conn:
        return build_plan(conn, loaded, drop_removed=drop_removed)


def apply(spec: Spec | str | Path, *, db: str | None = None, drop_removed: bool = False, batch_rows: int = 10_000,
          pause_s: float = 0.0) -> MigrationReport:
    """Run the plan; a crash or a failure is resumed by calling it again."""
    loaded = _spec(spec)
    with connect(resolve_url(db)) as conn:
        return apply_plan(conn, loaded, drop_removed=drop_removed, batch_rows=batch_rows, pause_s=pause_s)


def rollback(spec: Spec | str | Path, migration_id: int, *, db: str | None = None) -> Applied:
    """Undo one applied change of this spec's target (MigrationFailed when it cannot be undone)."""
    loaded = _spec(spec)
    with connect(resolve_url(db)) as conn:
        return rollback_change(conn, loaded, migration_id)
