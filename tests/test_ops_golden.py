"""The SQL of pgstage/ops pinned in tests/golden/ops/ (see tests/golden/README.md); the ops tests execute it.

    PGSTAGE_UPDATE_GOLDEN=1 pytest tests/test_ops_golden.py
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgstage.ops import _checksums, alerts, anomalies, reconcile
from pgstage.pipeline import transform
from pgstage.spec import Spec, parse_spec
from tests.test_golden_sql import GOLDEN, UPDATE, conn, rendered, spec_of  # noqa: F401 (conn is a fixture)

CDC = parse_spec(textwrap.dedent("""
    [pipeline]
    name = "cdc"
    target = 'app."Orders"'
    key = ["id"]

    [source]
    kind = "postgres"
    url = "postgresql://app@db/shop"
    table = "shop.orders"
    inserted_at = "created_at"
    updated_at = "updated_at"
    deleted_at = "deleted_at"

    [columns]
    id         = { from = "id", type = "integer" }
    customer   = { from = "Customer Name", type = "text" }
    email      = { from = "email", type = "text", normalize = ["lower"] }
    updated_at = { from = "updated_at", type = "timestamptz" }
    """))
WATERMARK = datetime(2024, 1, 1, 12, tzinfo=timezone.utc)


def by_keys(spec: Spec, types: dict[str, transform.ColumnType]) -> dict[str, Callable[[], sql.Composable | None]]:
    rows = reconcile.build_source_rows(spec, types, [("orders0.csv", "_chk_7_0_0"), ("orders1.csv", "_chk_7_1_0")])
    return {
        "reconcile_source_rows": lambda: rows,
        "reconcile_compare": lambda: reconcile.build_compare(spec, rows, "pgstage_reconcile"),
        "reconcile_extra": lambda: reconcile.build_extra(spec, rows, "2024-03-05", ["orders0.csv"]),
    }


def by_checksums(types: dict[str, transform.ColumnType]) -> dict[str, Callable[[], sql.Composable | None]]:
    columns = [n for n, c in CDC.columns.items() if _checksums.plain(c)]
    source = _checksums.build_side(CDC, types, columns, source=True, watermark=WATERMARK)
    return {
        "checksums_source": lambda: source,
        "checksums_in_flight": lambda: _checksums.build_side(CDC, types, columns, source=True, watermark=WATERMARK,
                                                             in_flight=True),
        "checksums_target": lambda: _checksums.build_side(CDC, types, columns, source=False, watermark=WATERMARK),
        "checksums_ranges": lambda: _checksums.build_ranges(sql.SQL("SELECT …"), 12, 8),
        "checksums_fetch": lambda: _checksums.build_fetch(sql.SQL("SELECT …"), 12),
        "anomalies_history": anomalies.build_history,
        "anomalies_accepted_before": anomalies.build_accepted_before,
        "alerts_recent_send": alerts.build_recent_send,
        "alerts_needs_recovery": alerts.build_needs_recovery,
        "alerts_record": alerts.build_record,
    }


def check(conn: psycopg.Connection[Any], folder_name: str, got_builders: dict[str, Callable[[], Any]]) -> None:
    folder = GOLDEN / "ops" / folder_name
    got = {name: rendered(conn, build()) for name, build in got_builders.items()}
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.sql"):
            stale.unlink()
        for name, text in got.items():
            (folder / f"{name}.sql").write_text(text)
    expected = {p.stem: p.read_text() for p in sorted(folder.glob("*.sql"))}
    assert set(expected) == set(got), "run with PGSTAGE_UPDATE_GOLDEN=1 to write the golden files"
    for name in got:
        assert got[name] == expected[name], f"ops/{folder_name}/{name}.sql differs; if intended: PGSTAGE_UPDATE_GOLDEN=1"


@pytest.mark.parametrize("case", ["upsert_if_newer", "insert_only"])
def test_reconcile_by_keys_sql(conn: psycopg.Connection[Any], case: str) -> None:
    spec = spec_of(case)
    check(conn, case, by_keys(spec, transform.resolve_types(conn, spec)))


def test_checksums_anomalies_and_alerts_sql(conn: psycopg.Connection[Any]) -> None:
    check(conn, "checksums", by_checksums(transform.resolve_types(conn, CDC)))
