"""The SQL of `migrate`, `[indexes]` and `reprocess`, pinned in tests/golden/migrate/ like the pipeline's.

tests/test_migrate.py, test_declared_indexes.py and test_reprocess.py execute the same
builders. After an intended change: `PGSTAGE_UPDATE_GOLDEN=1 pytest tests/test_golden_migrate.py`.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgstage import db, declared_indexes, reprocess
from pgstage.migrate import planner
from pgstage.migrate._steps import Change, Target
from pgstage.names import checked_table, staged_prefix
from pgstage.pipeline import transform
from pgstage.spec import parse_spec
from tests.test_golden_sql import GOLDEN, UPDATE, rendered

SPEC = parse_spec(textwrap.dedent("""
    [pipeline]
    name = "orders"
    target = 'Shop Data.Order "Lines"'
    key = ["id", "day"]

    [source]
    path = "orders.csv"
    null = ["NULL", "-"]

    [columns]
    id     = { from = "Id", type = "bigint" }
    day    = { from = "Day", type = "date", format = "DD/MM/YYYY" }
    email  = { from = "E-Mail", type = "text", normalize = ["trim", "lower"], regex = '^[^@ ]+@[^@ ]+$' }
    status = { from = "Status", type = "text", map = { "P" = "paid", "R" = "refunded" } }
    total  = { from = "Total", type = "money_cents", required = true }
    source = { const = "shop", type = "text", required = true }

    [indexes]
    "by day" = { columns = ["day desc nulls last", "id"] }
    by_email = { columns = ["email"], where = "email is not null and status <> 'x%y'", unique = true }

    [load]
    raw_column = "_raw"
    """))
TARGET = Target('Shop Data', 'Order "Lines"', rows=1000)


def steps(change: Change | None) -> sql.Composable:
    """Every statement of a change and of its undo, a backfill as its first batch."""
    assert change is not None
    parts: list[sql.Composable] = []
    for step in change.steps:
        parts.append(step.backfill.batch(10, 20) if step.backfill else step.statement or sql.SQL(""))
    parts.append(sql.SQL("-- rollback"))
    parts += [s.statement for s in change.rollback or () if s.statement is not None]
    return sql.SQL(";\n").join(parts)


def builders(types: dict[str, transform.ColumnType]) -> dict[str, Callable[[], sql.Composable | None]]:
    columns = {n: t.name for n, t in types.items()}
    change = lambda kind, detail: planner.build_change(SPEC, types, TARGET, kind, detail, drop_removed=True)  # noqa: E731
    return {
        "index_creates": lambda: sql.SQL(";\n").join(s for _, s in declared_indexes.creates(SPEC, columns)),
        "index_concurrently": lambda: sql.SQL(";\n").join(
            s for _, s in declared_indexes.creates(SPEC, columns, concurrently=True)),
        "add_column_from_raw": lambda: steps(change("add_column", {"column": "total", "type": "bigint",
                                                                   "required": True, "derive": "raw"})),
        "add_column_const": lambda: steps(change("add_column", {"column": "source", "type": "text",
                                                                "required": True, "derive": "const"})),
        "set_not_null": lambda: steps(change("set_not_null", {"column": "email"})),
        "rename_column": lambda: steps(change("rename_column", {"old": "mail", "new": "email"})),
        "widen_in_place": lambda: steps(change("widen_type", {"column": "status", "old_type": "character varying(5)",
                                                              "new_type": "text", "how": "in_place"})),
        "widen_by_copy": lambda: steps(change("widen_type", {"column": "id", "old_type": "integer",
                                                             "new_type": "bigint", "how": "copy", "not_null": True})),
        "add_index_invalid": lambda: steps(change("add_index", {"name": "by_email", "invalid": True})),
        "drop_column": lambda: steps(change("drop_column", {"column": "legacy", "type": "text"})),
        "reprocess_stage": lambda: reprocess.build_stage(SPEC, f"{staged_prefix(7, 1)}_0", 10, 20, 101, 7,
                                                          sql.SQL("{} > 0").format(sql.Identifier("id"))),
        "reprocess_update": lambda: reprocess.build_update(SPEC, f"{staged_prefix(7, 1)}_0", checked_table(7, 1, 0), 7,
                                                           dry_run=False),
        "reprocess_count": lambda: reprocess.build_update(SPEC, f"{staged_prefix(7, 1)}_0", checked_table(7, 1, 0), 7,
                                                          dry_run=True),
    }


@pytest.fixture(scope="module")
def conn(server_url: str) -> Any:
    with db.connect(server_url) as connection:
        yield connection


def test_rendered_sql_matches_the_golden_files(conn: psycopg.Connection[Any]) -> None:
    folder = GOLDEN / "migrate"
    got = {name: rendered(conn, build()) for name, build in builders(transform.resolve_types(conn, SPEC)).items()}
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.sql"):
            stale.unlink()
        for name, text in got.items():
            (folder / f"{name}.sql").write_text(text)
    expected = {p.stem: p.read_text() for p in sorted(folder.glob("*.sql"))}
    assert set(expected) == set(got), "run with PGSTAGE_UPDATE_GOLDEN=1 to write the golden files"
    for name in got:
        assert got[name] == expected[name], f"migrate/{name}.sql differs; if intended: PGSTAGE_UPDATE_GOLDEN=1"
