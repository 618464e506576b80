"""The SQL pgstage renders, pinned in files under tests/golden/: a reviewer sees every change to it in a diff.

Each case is a spec; for it the validation pass and every merge builder are rendered for one
or two staged batches (the tables need not exist: the builders are pure). The other tests
execute the same builders. After an intended change, regenerate and review the diff:

    PGSTAGE_UPDATE_GOLDEN=1 pytest tests/test_golden_sql.py
"""

from __future__ import annotations

import os
import re
import textwrap
from datetime import datetime, timezone
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgstage import db
from pgstage.names import checked_table, duplicates_table, staged_prefix
from pgstage.pipeline import known, merge, partition, stage, transform, validate
from pgstage.pipeline.extract import Header, SourceFile
from pgstage.pipeline.extract.digest import Digest
from pgstage.spec import Spec, parse_spec

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("PGSTAGE_UPDATE_GOLDEN") == "1"
RUN_ID = 7

COLUMNS = """
[columns]
id    = { from = "Id", type = "bigint" }
v     = { from = "Version", type = "integer" }
total = { from = "Total", type = "money_cents", min = 0, max = 100000000 }
email = { from = "E-Mail", type = "text", normalize = ["trim", "lower"], regex = '^[^@ ]+@[^@ ]+$', required = true }
day   = { from = "Day", type = "date", format = "DD/MM/YYYY" }
status = { from = "Status", type = "text", map = { "P" = "paid", "R" = "refunded" } }
"""

CASES = {
    "upsert": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id"]
        strategy = "upsert"
        """,
    "upsert_if_newer": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id"]
        strategy = "upsert_if_newer"
        version = "v"
        """,
    "insert_only": """
        [pipeline]
        name = "orders"
        target = 'Shop Data.Order "Lines"'
        key = ["id", "day"]
        strategy = "insert_only"
        """,
    "checks_and_unique": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id"]

        [checks]
        refund_not_above_total = "total >= 0 and (status <> 'refunded' or total > 0)"
        """,
    "surrogate_hash": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id", "day"]
        strategy = "upsert"
        surrogate_key = { column = "order_uid", kind = "hash" }
        """,
    "replace_partition": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id"]
        strategy = "replace_partition"
        partition = { column = "day", grain = "month", native = true }
        """,
    "scd2": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        key = ["id", "day"]
        strategy = "scd2"
        version = "day"

        [scd2]
        on_missing = "new_record"
        track = ["total", "status"]
        """,
    "append": """
        [pipeline]
        name = "orders"
        target = "shop.orders"
        strategy = "append"
        """,
}
EXTRA = {"checks_and_unique": '\n[load]\nraw_column = "_raw"\n'}


def spec_of(case: str) -> Spec:
    pipeline, _, scd2 = textwrap.dedent(CASES[case]).partition("[scd2]")
    text = pipeline + '\n[source]\npath = "orders.csv"\nnull = ["NULL", "-"]\n' + COLUMNS + (
        "\n[scd2]" + scd2 if scd2 else "")
    if case == "checks_and_unique":
        text = text.replace('regex = \'^[^@ ]+@[^@ ]+$\', required = true }', "unique = true }")
    return parse_spec(text + EXTRA.get(case, ""))


def batch(spec: Spec, file_no: int, batch_no: int) -> validate.Checked:
    fields = ("Id", "Version", "Total", "E-Mail", "Day", "Status", "Unused")
    field_of, ignored = stage.match_header(spec, Header(fields), "orders.csv")
    staged = stage.StagedBatch(SourceFile(Path(f"orders{file_no}.csv"), 100, Digest.known("0" * 64)), file_no, batch_no,
                               f"{staged_prefix(RUN_ID, file_no)}_{batch_no}", Header(fields), field_of,
                               0, 100, 1, read=10, ignored_fields=ignored)
    return validate.Checked(staged, checked_table(RUN_ID, file_no, batch_no), 0, hashed=True)


def rendered(conn: psycopg.Connection[Any], query: sql.Composable | None) -> str:
    """One clause a line, so a diff points at the clause that changed; the words are unchanged."""
    text = "-- (none)" if query is None else query.as_string(conn)
    return re.sub(r"(?<!LEFT)(?<!DISTINCT)(?<!CROSS) (?=(?:SELECT|FROM|WHERE|LEFT JOIN|JOIN|UNION ALL|GROUP BY|"
                  r"ORDER BY|ON CONFLICT|RETURNING|INSERT INTO|UPDATE|WINDOW|HAVING|CROSS JOIN)\b)", "\n", text) + "\n"


def builders(spec: Spec, types: dict[str, transform.ColumnType]) -> dict[str, Callable[[], sql.Composable | None]]:
    one, two = batch(spec, 0, 0), batch(spec, 1, 0)
    context = validate.Context(collation="pg_c_utf8", target_exists=True, row_hash_seed=42, known_rows=True)
    beaten = duplicates_table(RUN_ID)
    strategy = spec.pipeline.strategy
    if strategy == "replace_partition":
        window = partition.window(spec, types, "2024-01-15")
        context = validate.Context(collation="pg_c_utf8", target_exists=True, partition=window)
        cols = merge.keyed._written_columns(spec, one)
        return {
            "validate_check": lambda: validate.build_check(spec, types, one.staged, one.table, context),
            "merge_collector": lambda: merge.replace_partition.build_collector(spec, one, RUN_ID),
            "merge_collect": lambda: merge.replace_partition.build_collect(spec, types, one, RUN_ID, beaten, dedup=True),
            "merge_delete_partition": lambda: merge.replace_partition.build_delete(spec, window),
            "merge_insert_partition": lambda: merge.replace_partition.build_insert(spec, cols, RUN_ID),
            "merge_insert_last_batch": lambda: merge.replace_partition.build_insert_batch(spec, types, one, RUN_ID,
                                                                                          beaten, dedup=True),
            "merge_native_swap": lambda: sql.SQL(";\n").join(
                q for _, q in merge.replace_partition.build_native_swap(spec, window, cols, RUN_ID, True)),
            "merge_prediction": lambda: merge.replace_partition.build_prediction(spec, types, one, beaten),
        }
    if strategy == "scd2":
        as_of = datetime(2024, 1, 16, tzinfo=timezone.utc)
        return {
            "merge_steps": lambda: sql.SQL(";\n").join(
                q for _, q in merge.scd2.build_steps(spec, types, one, RUN_ID, beaten, as_of)),
            "merge_current_index": lambda: merge.scd2.build_current_index(spec),
            "merge_missing": lambda: merge.scd2._missing(spec, as_of, sql.Identifier("pgstage", "_seen_7")),
        }
    if strategy == "append":
        return {
            "merge_append": lambda: merge.append.build_insert(spec, types, one, RUN_ID),
            "merge_append_collect": lambda: merge.append.build_insert(spec, types, one, RUN_ID,
                                                                      sql.Identifier("pgstage", "_rp_7")),
            "merge_append_collector": lambda: merge.append.build_collector(spec, one, RUN_ID),
        }
    return {
        "validate_check": lambda: validate.build_check(spec, types, one.staged, one.table, context),
        "validate_check_first_load": lambda: validate.build_check(spec, types, one.staged, one.table, validate.Context()),
        "validate_rejects": lambda: validate.build_rejects(one.staged, one.table, RUN_ID),
        "validate_known_sample": lambda: known.build_sample(spec, types, one.staged, 42, "pg_c_utf8"),
        "merge_classify": lambda: merge.build_merge(spec, types, one, RUN_ID),
        "merge_classify_beaten": lambda: merge.build_merge(spec, types, one, RUN_ID, beaten),
        "merge_insert": lambda: merge.build_insert(spec, types, one, RUN_ID, dedup=True),
        "merge_insert_no_dedup": lambda: merge.build_insert(spec, types, one, RUN_ID, dedup=False),
        "merge_upsert": lambda: merge.build_upsert(spec, types, one, RUN_ID),
        "merge_write_sample": lambda: merge.build_write_sample(spec, types, one),
        "merge_write_sample_chunk": lambda: merge.build_write_sample(spec, types, one, (1, 500)),
        "merge_holds_a_key": lambda: merge.keyed.build_holds_a_key(spec, types, one),
        "merge_holds_a_key_chunk": lambda: merge.keyed.build_holds_a_key(spec, types, one, (1, 500)),
        "merge_above_target": lambda: _first(merge.keyed.build_above_target(spec, types, replace(one, key_range=("1", "9")))),
        "merge_has_duplicates": lambda: merge.build_has_duplicates(spec, one),
        "merge_beaten": lambda: merge.build_beaten(spec, [one, two], beaten),
        "merge_overlap": lambda: _query(merge.build_overlap(spec, types, [one, two])),
        "merge_overlap_ranges": lambda: _query(merge.build_overlap(spec, types, [replace(c, key_range=("1", "9")) for c in (one, two)])),
        "validate_tally": lambda: validate.build_tally(one.table, validate.range_key(spec, types)),
        "merge_prediction": lambda: merge.build_prediction(spec, types, one, None, True),
        "merge_resolve": lambda: merge.build_resolve(spec, types, RUN_ID, "pg_c_utf8"),
    }


def _first(built: tuple[sql.Composed, list[str]] | None) -> sql.Composable | None:
    """A builder's query without its parameters, None where the builder has none to ask."""
    return None if built is None else built[0]


def _query(built: tuple[sql.Composed, list[str | None]] | None) -> sql.Composable:
    """A builder's query without its parameters (rendered as the %s placeholders it holds)."""
    assert built is not None
    return built[0]


@pytest.fixture(scope="module")
def conn(server_url: str) -> Any:
    """Rendering needs a connection's encoding and the column types PostgreSQL canonicalizes; nothing is created."""
    with db.connect(server_url) as connection:
        yield connection


@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_sql_matches_the_golden_files(conn: psycopg.Connection[Any], case: str) -> None:
    spec = spec_of(case)
    types = transform.resolve_types(conn, spec)
    folder = GOLDEN / case
    got = {name: rendered(conn, build()) for name, build in builders(spec, types).items()}
    if UPDATE:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.sql"):
            stale.unlink()
        for name, text in got.items():
            (folder / f"{name}.sql").write_text(text)
    expected = {p.stem: p.read_text() for p in sorted(folder.glob("*.sql"))}
    assert set(expected) == set(got), "run with PGSTAGE_UPDATE_GOLDEN=1 to write the golden files"
    for name in got:
        assert got[name] == expected[name], f"{case}/{name}.sql differs; if intended: PGSTAGE_UPDATE_GOLDEN=1"
