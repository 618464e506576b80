"""Surrogate keys with every keyed strategy: uuid kept for the row's life, hash deterministic and
length-prefixed (checked against an independent Python computation)."""

from __future__ import annotations

import hashlib
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

import pgstage
from pgstage.errors import SpecError
from pgstage.pipeline.merge import surrogate
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import parse_spec
from tests.conftest import assert_identity

SPEC = """
[pipeline]
name = "sk"
target = "sales.orders"
key = ["source", "order_id"]
strategy = "{strategy}"
{extra}
surrogate_key = {{ column = "id", kind = "{kind}" }}

[source]
path = "orders.csv"

[columns]
source = {{ from = "source", type = "text" }}
order_id = {{ from = "order_id", type = "text" }}
amount = {{ from = "amount", type = "integer" }}
ordered_at = {{ from = "ordered_at", type = "timestamptz" }}
"""

DAY1 = "source,order_id,amount,ordered_at\na,bc,1,2024-01-15 10:00:00+00\nab,c,2,2024-01-15 11:00:00+00\nx,1,3,2024-01-15 12:00:00+00\n"
# Every existing row changes (so upsert takes its ON CONFLICT path), one key is new.
DAY2 = "source,order_id,amount,ordered_at\na,bc,10,2024-01-15 13:00:00+00\nab,c,20,2024-01-15 13:00:00+00\nx,1,30,2024-01-15 13:00:00+00\ny,2,4,2024-01-15 14:00:00+00\n"


def expected_hash(*values: str) -> uuid.UUID:
    """The independent model: md5 of each value's length in characters, ':', the value."""
    return uuid.UUID(hashlib.md5("".join(f"{len(v)}:{v}" for v in values).encode()).hexdigest())


def setup(tmp_path: Path, strategy: str, kind: str) -> Path:
    extra = {"upsert_if_newer": 'version = "ordered_at"',
             "replace_partition": 'partition = { column = "ordered_at", grain = "day" }'}.get(strategy, "")
    path = tmp_path / "spec.toml"
    path.write_text(textwrap.dedent(SPEC.format(strategy=strategy, extra=extra, kind=kind)))
    return path


def load(spec: Path, db_url: str, csv: str) -> pgstage.RunReport:
    (spec.parent / "orders.csv").write_text(csv)
    partition = "2024-01-15" if "replace_partition" in spec.read_text() else None
    report = pgstage.run(spec, db=db_url, partition=partition)
    assert_identity(report)
    return report


def ids(sql) -> dict[tuple[str, str], tuple[uuid.UUID, int]]:
    return {(s, o): (i, a) for i, s, o, a in sql("SELECT id, source, order_id, amount FROM sales.orders")}


STRATEGIES = ["insert_only", "upsert", "upsert_if_newer", "replace_partition"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_uuid_is_kept_for_the_rows_life(tmp_path: Path, db_url: str, sql, strategy: str) -> None:
    spec = setup(tmp_path, strategy, "uuid")
    load(spec, db_url, DAY1)
    first = ids(sql)
    assert len({i for i, _ in first.values()}) == 3
    second = load(spec, db_url, DAY2)
    now = ids(sql)
    assert set(now) == {("a", "bc"), ("ab", "c"), ("x", "1"), ("y", "2")}
    amounts = {k: a for k, (_, a) in now.items()}
    if strategy == "insert_only":
        assert amounts == {("a", "bc"): 1, ("ab", "c"): 2, ("x", "1"): 3, ("y", "2"): 4}
    else:
        assert amounts == {("a", "bc"): 10, ("ab", "c"): 20, ("x", "1"): 30, ("y", "2"): 4}
    if strategy == "replace_partition":   # the day's rows are new rows: new ids
        assert second.counts.deleted == 3 and second.counts.inserted == 4
    else:
        assert second.counts.inserted == 1
        assert second.counts.updated == (0 if strategy == "insert_only" else 3)
        assert {k: now[k][0] for k in first} == {k: i for k, (i, _) in first.items()}
    assert len({i for i, _ in now.values()}) == 4
    # The surrogate is the primary key; the business key stays unique.
    assert sql("SELECT contype::text, array_agg(a.attname::text ORDER BY a.attname) FROM pg_constraint c"
               " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY(c.conkey)"
               " WHERE c.conrelid = 'sales.orders'::regclass AND contype IN ('p', 'u') GROUP BY c.oid, contype ORDER BY 1") == [
        ("p", ["id"]), ("u", ["order_id", "source"])]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hash_is_deterministic_and_length_prefixed(tmp_path: Path, db_url: str, sql, strategy: str) -> None:
    spec = setup(tmp_path, strategy, "hash")
    load(spec, db_url, DAY1)
    load(spec, db_url, DAY2)
    got = {k: i for k, (i, _) in ids(sql).items()}
    assert got == {k: expected_hash(*k) for k in [("a", "bc"), ("ab", "c"), ("x", "1"), ("y", "2")]}
    assert got[("a", "bc")] != got[("ab", "c")]   # no collision by concatenation


def test_hash_of_typed_values_ignores_session_settings(db_url: str) -> None:
    """A timestamptz key hashes its UTC instant, whatever TimeZone and DateStyle the session has."""
    spec = parse_spec(textwrap.dedent("""
        [pipeline]
        name = "t"
        target = "s.t"
        key = ["at", "n"]
        surrogate_key = { column = "id", kind = "hash" }
        [source]
        path = "x.csv"
        [columns]
        at = { from = "at", type = "timestamptz" }
        n = { from = "n", type = "numeric" }
        """))
    types = {"at": ColumnType("timestamp with time zone", "D"),
             "n": ColumnType("numeric", "N")}
    query = pgsql.SQL("SELECT {} FROM (SELECT '2024-01-15 10:00:00+00'::timestamptz AS at, 1.50::numeric AS n) r").format(
        surrogate.build_hash(spec, types, "r"))
    with psycopg.connect(db_url) as conn:
        values = []
        for zone, style in (("UTC", "ISO, MDY"), ("Asia/Kolkata", "SQL, DMY"), ("America/Lima", "German")):
            conn.execute(pgsql.SQL("SET TimeZone = {}; SET DateStyle = {}").format(pgsql.Literal(zone), pgsql.Literal(style)))
            values.append(conn.execute(query).fetchone()[0])  # type: ignore[index]
    assert values == [expected_hash("2024-01-15T10:00:00", "1.50")] * 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), min_size=1, max_size=8))
def test_hash_model(server_url: str, pairs: list[tuple[str, str]]) -> None:
    """Any text (quotes, separators, non-ASCII, empty): the SQL hash equals the model; distinct keys, distinct ids."""
    pairs = [(a.replace("\x00", ""), b.replace("\x00", "")) for a, b in pairs]
    spec = parse_spec(textwrap.dedent("""
        [pipeline]
        name = "t"
        target = "s.t"
        key = ["a", "b"]
        surrogate_key = { column = "id", kind = "hash" }
        [source]
        path = "x.csv"
        [columns]
        a = { from = "a" }
        b = { from = "b" }
        """))
    types = {k: ColumnType("text", "S") for k in ("a", "b")}
    query = pgsql.SQL("SELECT a, b, {} FROM unnest(%s::text[], %s::text[]) AS r(a, b)").format(
        surrogate.build_hash(spec, types, "r"))
    with psycopg.connect(server_url) as conn:
        rows = conn.execute(query, ([a for a, _ in pairs], [b for _, b in pairs])).fetchall()
    assert {(a, b): h for a, b, h in rows} == {p: expected_hash(*p) for p in pairs}
    assert len({h for _, _, h in rows}) == len(set(pairs))


def test_surrogate_spec_problems(tmp_path: Path) -> None:
    base = """
    [pipeline]
    name = "x"
    target = "app.t"
    strategy = "replace_partition"
    partition = { column = "at", native = true }
    key = ["id"]
    surrogate_key = { column = "id", kind = "md5" }
    [source]
    path = "x.csv"
    [columns]
    id = { from = "id", type = "bigint" }
    at = { from = "at", type = "date" }
    """
    with pytest.raises(SpecError) as raised:
        parse_spec(textwrap.dedent(base))
    assert any("surrogate_key.kind" in p and "'uuid' or 'hash'" in p for p in raised.value.problems)
    with pytest.raises(SpecError) as raised:
        parse_spec(textwrap.dedent(base.replace('"md5"', '"uuid"')))
    assert any("surrogate_key cannot be the primary key of a natively partitioned target" in p
               for p in raised.value.problems)
    with pytest.raises(SpecError) as raised:
        parse_spec(textwrap.dedent(base.replace('"md5"', '"uuid"').replace("native = true", "native = false")))
    assert any("surrogate_key.column 'id' is already a column" in p for p in raised.value.problems)
