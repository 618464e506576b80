"""Leaner forms of the validation pass give exactly the rows, hashes and rejects of the forms they replace.

- A text column (`validate.always_valid`) has no type rule: every text is valid input for it, so
  the rule could never fail; nothing else changes for it. Nor has a column cast first with
  nothing to guard (`transform.guarded`): its cast fails the attempt on any invalid value.
- A `character(n)` or `character varying(n)` value of at most n bytes is valid without the input
  function (`transform.length_limit`): the same verdict as `pg_input_is_valid` for any text.
- A whole min/max limit of an integer column is an integer literal (`validate.bound`): integers
  compare with it as they do with the same number as numeric.
- `_row_hash` stays bit for bit `hash_record_extended(ROW(<the fields the spec reads>), seed)`
  of the raw fields, and a rejected record's raw values are its fields.

Each is checked against an independent oracle: plain Python for the rows and reasons, bare SQL
over a plain COPY of the same file for the hash.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import sql as pgsql

import pgstage
from pgstage.pipeline import known, transform, validate
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import load_spec
from tests.conftest import assert_identity

_examples = itertools.count()

_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
limits = st.one_of(st.integers(-2**70, 2**70).map(float), st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**63, -2.0**63]),
                   st.floats(-1e6, 1e6, allow_nan=False), st.floats(allow_nan=False, allow_infinity=False))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=limits, type_name=st.sampled_from(sorted(_RANGES)), data=st.data())
@example(limit=0.0, type_name="bigint", data=None)
@example(limit=-0.0, type_name="smallint", data=None)
@example(limit=2.0**63, type_name="bigint", data=None)
@example(limit=-2.0**63, type_name="bigint", data=None)   # read back as -9223372036854776000, not -2**63
def test_an_integer_compares_with_bound_as_with_the_limit_as_numeric(sql: Any, limit: float, type_name: str,
                                                                   data: Any) -> None:
    top = _RANGES[type_name]
    edges = [-top, -top + 1, -1, 0, 1, top - 2, top - 1]
    drawn = data.draw(st.lists(st.integers(-top, top - 1), max_size=20)) if data is not None else []
    near = [v for v in (int(limit) - 1, int(limit), int(limit) + 1) if -top <= v < top] if abs(limit) < 2.0**64 else []
    values = [*edges, *near, *drawn]
    kind = ColumnType(type_name, "N")
    query = pgsql.SQL("SELECT v, v < {b}, v > {b}, v::numeric < {l}, v::numeric > {l}"
                      " FROM unnest(%s::{t}[]) v").format(
        b=validate.bound(limit, kind), l=pgsql.Literal(limit), t=pgsql.SQL(type_name))
    for v, below, above, numeric_below, numeric_above in sql(query.as_string(), (values,)):
        assert (below, above) == (numeric_below, numeric_above), (v, limit)


def test_bound_is_an_integer_literal_only_for_a_whole_limit_of_an_integer_column() -> None:
    def text(limit: float, type_name: str) -> str:
        return pgsql.Composed([validate.bound(limit, ColumnType(type_name, "N"))]).as_string().strip()  # psycopg spaces a minus

    assert text(0.0, "bigint") == "0"
    assert text(-5.0, "integer") == "-5"
    assert text(99.5, "bigint") == "99.5"
    assert text(0.0, "numeric(12,2)") == "0.0"
    assert text(1.0, "double precision") == "1.0"


# Read in the header's order (the hash's row is the record: carried as one value) or not (hashed apart).
SPECS = {
    "all": ("id", "name", "qty", "note", "code"),
    "some": ("id", "code", "qty", "note"),
}
SPEC = """
[pipeline]
name = "{name}"
target = "public.{name}"
key = ["id"]
strategy = "upsert"

[source]
path = "{name}.csv"

[columns]
{columns}

[load]
max_reject_ratio = 1.0
"""
COLUMNS = {
    "id": 'id = {{ from = "id", type = "bigint", required = true }}',
    "name": 'name = {{ from = "name", type = "text", normalize = ["trim"] }}',
    "qty": 'qty = {{ from = "qty", type = "integer", min = 0, max = 99.5 }}',
    "note": 'note = {{ from = "note", type = "text" }}',
    "code": 'code = {{ from = "code", type = "text", in = ["a", "b"] }}',
}
HEADER = ["id", "name", "qty", "note", "code"]

free_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00\r"), max_size=6)
records = st.lists(st.tuples(free_text, st.sampled_from(["0", "5", "99", "100", "-1", "x", "", "2147483648"]),
                             free_text, st.sampled_from(["a", "b", "c", ""])), min_size=1, max_size=20)


def _expected(rows: list[tuple[str, str, str, str]], read: tuple[str, ...]) -> tuple[list[Any], list[Any]]:
    """The oracle: (landed rows, rejects) in plain Python. An empty unquoted field is NULL."""
    landed, rejects = [], []
    for i, (name, qty, note, code) in enumerate(rows, 1):
        raw = dict(zip(HEADER, [str(i), name, qty, note, code]))
        found: dict[str, list[dict[str, str]]] = {"qty": [], "code": []}
        if "qty" in read and qty:
            if not qty.lstrip("-").isdigit() or not -2**31 <= int(qty) < 2**31:
                message = (f'value "{qty}" is out of range for type integer' if qty.lstrip("-").isdigit()
                           else f'invalid input syntax for type integer: "{qty}"')
                found["qty"].append({"column": "qty", "rule": "type", "message": message})
            elif int(qty) < 0:
                found["qty"].append({"column": "qty", "rule": "min", "message": f"{qty} is below the minimum 0"})
            elif int(qty) > 99.5:
                found["qty"].append({"column": "qty", "rule": "max", "message": f"{qty} is above the maximum 99.5"})
        if "code" in read and code and code not in ("a", "b"):
            found["code"].append({"column": "code", "rule": "in", "message": f"'{code}' is not one of a, b"})
        reasons = [r for c in read for r in found.get(c, [])]   # in the spec's column order
        if reasons:
            rejects.append((i, {k: (v or None) for k, v in raw.items()}, reasons))
            continue
        values = {"id": i, "name": name.strip(" ") or None, "qty": int(qty) if qty else None, "note": note or None,
                  "code": code or None}
        landed.append(tuple(values[c] for c in read))
    return landed, rejects


@pytest.mark.parametrize("variant", sorted(SPECS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=records)
@example(rows=[(" x ", "5", "Ω 'q'", "a"), ("", "-1", "", "c"), ("now", "100", "\t", ""), ("é", "x", "a,b", "b"),
               ("", "", "", ""), ("y", "2147483648", '"', "a")])
def test_rows_hashes_and_rejects_equal_the_oracles(tmp_path: Path, db_url: str, sql: Any, variant: str,
                                                   rows: list[tuple[str, str, str, str]]) -> None:
    read = SPECS[variant]
    name = f"lean{variant}{next(_examples)}"
    folder = tmp_path / name
    folder.mkdir()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    writer.writerows([str(i), *r] for i, r in enumerate(rows, 1))
    path = folder / f"{name}.csv"
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    spec_path = folder / "spec.toml"
    spec_path.write_text(SPEC.format(name=name, columns="\n".join(COLUMNS[c] for c in read)).replace("{{", "{")
                         .replace("}}", "}"), encoding="utf-8")
    report = pgstage.run(spec_path, db=db_url)
    assert_identity(report)
    landed, rejects = _expected(rows, read)
    columns = ", ".join(read)
    assert sql(f"SELECT {columns} FROM public.{name} ORDER BY id") == landed
    assert sql("SELECT j.record, j.raw, j.reasons FROM pgstage.rejects j JOIN pgstage.runs r USING (run_id)"
               " WHERE r.pipeline = %s ORDER BY j.record", (name,)) == rejects
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (
        len(rows), len(rejects), len(landed))
    # The hash: bare SQL over a plain COPY of the file, the fields the spec reads in its order, seeded as pgstage seeds.
    with psycopg.connect(db_url, autocommit=True) as conn:
        seed = known.session_seed(conn, load_spec(spec_path))
    sql(f"CREATE TABLE raw_{name} (id text, name text, qty text, note text, code text)")
    with psycopg.connect(db_url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY raw_{name} FROM STDIN (FORMAT csv, HEADER true)") as copy:
            copy.write(path.read_bytes())
    fields = ", ".join(f"r.{c}" for c in read)
    assert sql(f"SELECT t.id, t._row_hash = hash_record_extended(ROW({fields}), %s) FROM public.{name} t"
               f" JOIN raw_{name} r ON r.id::bigint = t.id ORDER BY t.id", (seed,)) == [(row[0], True) for row in landed]


def test_a_column_cast_first_with_nothing_to_guard_has_no_validity_column_and_no_type_rule(db_url: str) -> None:
    """Rendered: `id` (bigint) cast first without refused values is judged by its cast alone; with one, by its guard."""
    from pgstage.pipeline._cast_first import CastPlan
    from tests.test_golden_sql import batch, spec_of

    spec = spec_of("upsert")
    one = batch(spec, 0, 0)
    with psycopg.connect(db_url, autocommit=True) as conn:
        types = transform.resolve_types(conn, spec)
        plain, refusing = (validate.build_check(spec, types, one.staged, one.table, validate.Context(), cast_first=plan)
                           .as_string(conn) for plan in (CastPlan(), CastPlan(refused={"id": ("x",)})))
    assert '"_ok_id"' not in plain and "'rule', 'type', 'message', (pg_input_error_info(\"_n_id\"" not in plain
    assert '("_n_id")::bigint AS "_v_id"' in plain
    assert '"_ok_id"' in refusing and "'rule', 'type', 'message', (pg_input_error_info(\"_n_id\"" in refusing
    for text_column in ("email", "status"):   # text: never judged, in any pass
        assert f'"_ok_{text_column}"' not in plain and f'"_ok_{text_column}"' not in refusing


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=7)
                       | st.sampled_from(["", " ", "abc", "abc ", "abcd", "ab  ", "ééé", "éééé", "€€ ", "ab\t", "a b c"]),
                       max_size=20),
       length=st.integers(1, 4), type_word=st.sampled_from(["character", "character varying"]))
@example(values=["ééé", "éééé", "abc  ", "abcd", "€ "], length=3, type_word="character")
def test_a_length_limited_text_is_valid_exactly_when_its_input_function_says_so(
        sql: Any, values: list[str], length: int, type_word: str) -> None:
    """`octet_length(v) <= n` before `pg_input_is_valid` (multibyte text, trailing spaces, which the input trims)."""
    kind = ColumnType(f"{type_word}({length})", "S")
    assert transform.length_limit(kind) == length
    column = load_spec_column(kind.name)
    query = pgsql.SQL("SELECT v, {}, pg_input_is_valid(v, {}) FROM unnest(%s::text[]) v").format(
        transform.valid(pgsql.Identifier("v"), None, column, kind), pgsql.Literal(kind.name))
    for v, ours, postgres in sql(query.as_string(), (values,)):
        assert ours == postgres, v


def load_spec_column(type_name: str) -> Any:
    """A spec column of the type, as the spec parser makes it."""
    from pgstage.spec import parse_spec

    spec = parse_spec(f'[pipeline]\nname = "p"\ntarget = "public.p"\nkey = ["c"]\n[source]\npath = "p.csv"\n'
                      f'[columns]\nc = {{ from = "c", type = "{type_name}" }}\n')
    return spec.columns["c"]
