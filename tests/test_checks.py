"""Check expressions: what is accepted renders to SQL that PostgreSQL evaluates as written; what is
refused says what and where. Accepted checks are executed on a real database, inside a statement
that also carries a parameter (a stray `%` would break it)."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from pgstage.checks import compile_check, validate_checks
from pgstage.errors import SpecError

WEIRD = 'we"ird\'; drop table t; --'
COLUMNS = {
    "id": "integer", "a": "integer", "amount_cents": "bigint", "refunded_cents": "bigint", "s": "text",
    "flag": "boolean", "d": "date", "ts": "timestamp with time zone", WEIRD: "text", "Mixed": "text",
}

TABLE = f"""
CREATE TABLE t (id integer, a integer, amount_cents bigint, refunded_cents bigint, s text, flag boolean, d date,
                ts timestamptz, "{WEIRD.replace('"', '""')}" text, "Mixed" text);
INSERT INTO t VALUES
  (1, 5,    1000, 0,    'it''s',  true,  '2024-01-15', '2024-01-15 10:00:00+00', 'x', 'M'),
  (2, -1,   500,  600,  '100%',   false, '2023-12-31', '2023-12-31 23:00:00+00', 'y', 'm'),
  (3, NULL, 0,    NULL, NULL,     NULL,  NULL,         NULL,                     NULL, NULL),
  (4, 12,   2500, 2500, ' pad ',  true,  '2024-02-29', '2024-02-29 00:00:00+00', 'x', 'Q');
"""


@pytest.fixture
def evaluate(db_url: str):
    """Evaluate a compiled check for every row of t, in id order, with a parameter in the same statement."""
    conn = psycopg.connect(db_url, autocommit=True)
    conn.execute(TABLE)

    def run(expression: str) -> list[object]:
        check = compile_check("c", expression, COLUMNS)
        query = sql.SQL("SELECT {}, %s::int FROM t ORDER BY id").format(check)
        return [row[0] for row in conn.execute(query, (7,)).fetchall()]

    yield run
    conn.close()


ACCEPTED = [
    ("refunded_cents <= amount_cents", [True, False, None, True]),
    ("a > 1 AND flag", [True, False, None, True]),
    ("a > 1 OR NOT flag", [True, True, None, True]),
    ("NOT (a BETWEEN 0 AND 10)", [False, True, None, True]),
    ("s IS NULL", [False, False, True, False]),
    ("s IS NOT NULL AND a IS NOT NULL", [True, True, False, True]),
    ("a IN (5, 12)", [True, False, None, True]),
    ("a NOT IN (5, 12)", [False, True, None, False]),
    ("amount_cents - coalesce(refunded_cents, 0) >= 0", [True, False, True, True]),
    ("a * 2 + 1 > 10 AND a % 2 = 0", [False, False, None, True]),
    ("CASE WHEN a > 10 THEN true WHEN a > 0 THEN flag ELSE false END", [True, False, False, True]),
    ("s = 'it''s'", [True, False, None, False]),
    ("s LIKE '100%'", [False, True, None, False]),
    ("s ~ '^[a-z]'", [True, False, None, False]),
    ("btrim(s) = 'pad' OR length(s) = 4", [True, True, None, True]),
    ("lower(\"Mixed\") = 'm' AND upper(\"Mixed\") = 'M'", [True, True, None, False]),
    ("abs(a) = 1 OR round(amount_cents / 1000.0) = 3", [False, True, None, True]),
    ("nullif(refunded_cents, 0) IS NULL", [True, False, True, False]),
    ("extract(year from d) = 2024", [True, False, None, True]),
    ("date_part('month', d) = 2", [False, False, None, True]),
    ("date_trunc('day', ts) = ts", [False, False, None, True]),
    ("d + interval '1 day' > '2024-01-01'", [True, False, None, True]),
    ("a::numeric(10,2) / 4 > 1.2", [True, False, None, True]),
    ("flag", [True, False, None, True]),
    ("coalesce(flag, false)", [True, False, False, True]),
    (f'"{WEIRD.replace(chr(34), chr(34) * 2)}" = \'x\'', [True, False, None, True]),
    ("A > 1", [True, False, None, True]),  # unquoted names fold to lower case, as in PostgreSQL
]


@pytest.mark.parametrize(("expression", "expected"), ACCEPTED, ids=[e for e, _ in ACCEPTED])
def test_accepted_checks_evaluate_as_written(expression: str, expected: list[object], evaluate) -> None:
    assert evaluate(expression) == expected


REFUSED = [
    ("a > 1; drop table x", "';' at position 6: a check is one expression, not statements"),
    ("a > (select 1)", "subqueries are not allowed at position 6: a check is one condition over the row's columns"),
    ("a IN (SELECT id FROM t)", "subqueries are not allowed at position 7: a check is one condition over the row's columns"),
    ("delete from t", "statements (DELETE) are not allowed at position 1: a check is one condition over the row's columns"),
    ("select 1", "statements (SELECT) are not allowed at position 1: a check is one condition over the row's columns"),
    ("a > 1 -- comment", "comments are not allowed at position 7"),
    ("/* hidden */ a > 1", "comments are not allowed at position 1"),
    ("pg_sleep(1) is null", "function pg_sleep() is not allowed at position 1 (allowed: abs, btrim, coalesce,"
                            " date_part, date_trunc, extract, length, lower, nullif, round, upper)"),
    ("ts < now()", "function now() is not allowed at position 6 (allowed: abs, btrim, coalesce, date_part,"
                   " date_trunc, extract, length, lower, nullif, round, upper)"),
    ("b > 1", "unknown column 'b' at position 1"),
    ("refunded <= amount_cents", "unknown column 'refunded' at position 1 (did you mean 'refunded_cents'?)"),
    ("a > 0 and \"mixed\" = 'x'", "unknown column 'mixed' at position 11 (did you mean 'Mixed'?)"),
    ("t.a > 1", "qualified name 't.a' at position 1: use the bare column name"),
    ("a >", "syntax error at position 3 near '>'"),
    ("s = 'open", "syntax error at position 5: an unterminated string, quoted name or comment"),
    ("1", "not a condition at position 1: a check must be true or false for a row (e.g. \"amount_cents >= 0\")"),
    ("a", "not a condition at position 1: a check must be true or false for a row (e.g. \"amount_cents >= 0\")"),
    ("amount_cents - refunded_cents", "not a condition at position 1: a check must be true or false for a row"
                                      " (e.g. \"amount_cents >= 0\")"),
    ("a > 1 AND s", "not a condition at position 1: a check must be true or false for a row (e.g. \"amount_cents >= 0\")"),
    ("a > $1", "parameters and placeholders are not allowed at position 5"),
    ("a > %s", "parameters and placeholders are not allowed at position 5"),
    ("a > :x", "parameters and placeholders are not allowed at position 5"),
    ("e'\\x41' = s", "this kind of string (use a plain 'string') is not allowed at position 1"),
    ("", "empty expression: write a condition such as \"amount_cents >= 0\""),
]


@pytest.mark.parametrize(("expression", "message"), REFUSED, ids=[e or "empty" for e, _ in REFUSED])
def test_refused_checks_say_what_and_where(expression: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        compile_check("refund_ok", expression, COLUMNS, source="spec.toml")
    assert caught.value.message == f"spec.toml: checks.refund_ok: {message}"
    assert caught.value.exit_code == 2


def test_rendered_sql_quotes_every_column(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        check = compile_check("c", f'"{WEIRD.replace(chr(34), chr(34) * 2)}" = \'x\' AND a % 2 = 0', COLUMNS)
        assert check.as_string(conn) == '"we""ird\'; drop table t; --" = \'x\' AND MOD("a", 2) = 0'
        check = compile_check("c", "s LIKE '1%' AND refunded_cents <= amount_cents", COLUMNS)
        assert check.as_string(conn) == "\"s\" LIKE U&'1\\0025' AND \"refunded_cents\" <= \"amount_cents\""
        assert "%" not in check.as_string(conn)


def test_validate_checks_reports_every_problem_at_once() -> None:
    checks = {"ok": "a > 0", "typo": "refundd_cents <= amount_cents", "sleepy": "pg_sleep(1) IS NULL", "bare": "a"}
    with pytest.raises(SpecError) as caught:
        validate_checks(checks, COLUMNS, source="orders.toml")
    error = caught.value
    assert error.message == "orders.toml: 3 problem(s) in [checks]"
    assert error.problems == (
        "orders.toml: checks.typo: unknown column 'refundd_cents' at position 1 (did you mean 'refunded_cents'?)",
        "orders.toml: checks.sleepy: function pg_sleep() is not allowed at position 1 (allowed: abs, btrim,"
        " coalesce, date_part, date_trunc, extract, length, lower, nullif, round, upper)",
        "orders.toml: checks.bare: not a condition at position 1: a check must be true or false for a row"
        " (e.g. \"amount_cents >= 0\")",
    )
    compiled = validate_checks({"ok": "a > 0", "refund": "refunded_cents <= amount_cents"}, COLUMNS)
    assert list(compiled) == ["ok", "refund"]


def test_loading_without_checks_does_not_import_the_checks_parser() -> None:
    """sqlglot is a seventh of the command line's start-up: only a spec with checks pays for it."""
    import subprocess
    import sys

    probe = "import sys, pgstage.run, pgstage.cli; print(sorted(m for m in ('sqlglot', 'pgstage.checks') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
