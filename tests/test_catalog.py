"""describe_table: a target's live columns and exact row count, the numbers Dagster shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pgstage import describe_table
from pgstage.catalog import Column


def test_columns_in_order_with_types_and_exact_count_under_awkward_names(
        db_url: str, sql: Callable[..., list[tuple[Any, ...]]]) -> None:
    sql('CREATE SCHEMA "Sales Q\'1"')
    sql('CREATE TABLE "Sales Q\'1"."Or""ders" (id bigint NOT NULL, "ba\'z" numeric(12, 2), gone int, at timestamptz)')
    sql('ALTER TABLE "Sales Q\'1"."Or""ders" DROP COLUMN gone')
    sql('INSERT INTO "Sales Q\'1"."Or""ders" (id) SELECT generate_series(1, 1234)')
    table = describe_table('Sales Q\'1.Or"ders', db=db_url)
    assert (table.exists, table.row_count) == (True, 1234)
    assert table.columns == (Column("id", "bigint", False), Column("ba'z", "numeric(12,2)", True),
                             Column("at", "timestamp with time zone", True))


def test_a_missing_table_is_reported_not_raised(db_url: str) -> None:
    table = describe_table("sales.orders", db=db_url)
    assert (table.exists, table.row_count, table.columns) == (False, 0, ())
