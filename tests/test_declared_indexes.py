"""`[indexes]`: parsed and rebuilt safely, created with the target, kept through index_strategy."""

from __future__ import annotations

import pytest

from pgstage.declared_indexes import IndexKey, build_create, parse_key
from pgstage.errors import SpecError
from pgstage.spec import parse_spec
from tests.conftest import Loader

SPEC = """
[pipeline]
name = "orders"
target = 'shop.Order "Lines"'
key = ["id"]

[source]
path = "orders*.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
source = {{ from = "source", type = "text" }}
email = {{ from = "email", type = "text" }}
ordered_at = {{ from = "ordered_at", type = "timestamptz" }}

[indexes]
{indexes}

[load]
index_strategy = "{strategy}"
"""
TWO = ('"by source" = { columns = ["source", "ordered_at desc"] }\n'
       'by_email = { columns = ["email"], where = "email is not null and email <> \'x;y\'" }\n'
       'one_email = { columns = ["email nulls first"], unique = true, where = "email like \'%@shop\'" }')


def definitions(sql) -> dict[str, str]:
    return dict(sql("SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
                    " JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = 'shop.\"Order \"\"Lines\"\"\"'::regclass AND NOT i.indisprimary"))


def csv_rows(n: int) -> str:
    return "id,source,email,ordered_at\n" + "".join(
        f"{i},s{i % 3},{'' if i % 4 == 0 else f'u{i}@shop'},2024-01-{1 + i % 28:02d} 10:00:00+00\n" for i in range(n))


def test_keys_parse_to_a_column_and_an_order() -> None:
    assert parse_key("ordered_at desc") == IndexKey("ordered_at", True, None)
    assert parse_key("  a b  ASC NULLS last ") == IndexKey("a b", False, "last")
    rendered = build_create(("s", "t"), 'i"x', ('a"b desc nulls first',), unique=True).as_string()
    assert rendered == 'CREATE UNIQUE INDEX IF NOT EXISTS "i""x" ON "s"."t" ("a""b" DESC NULLS FIRST)'


def test_bad_indexes_are_all_reported_with_their_lines() -> None:
    text = SPEC.format(strategy="keep", indexes=(
        'a = { columns = ["nope"] }\n'
        'b = { columns = ["email"], where = "email is not null; drop table x" }\n'
        'c = { columns = ["email"], where = "(select 1) = 1" }'))
    with pytest.raises(SpecError) as caught:
        parse_spec(text, None)
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert "<spec>:17: indexes.a.columns: 'nope' is not a column of the target" in problems
    assert any(p.startswith("<spec>:18: ") and "indexes.b.where: ';' at position 18" in p for p in problems)
    assert any(p.startswith("<spec>:19: ") and "subqueries are not allowed" in p for p in problems)


def test_an_unknown_index_key_is_named() -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(SPEC.format(strategy="keep", indexes='d = { columns = ["email"], wher = "x" }'), None)
    assert caught.value.problems == ("<spec>:17: indexes.d.wher: unknown key (did you mean 'where'?)",)


def test_created_with_the_target_and_kept_through_a_rebuild(loader: Loader, sql) -> None:
    loader.spec(SPEC.format(strategy="rebuild", indexes=TWO))
    loader.write("orders1.csv", csv_rows(200))
    first = loader.run()
    assert first.counts.inserted == 200
    made = definitions(sql)
    assert made == {
        "by source": 'CREATE INDEX "by source" ON shop."Order ""Lines""" USING btree (source, ordered_at DESC)',
        "by_email": 'CREATE INDEX by_email ON shop."Order ""Lines""" USING btree (email)'
                    " WHERE ((email IS NOT NULL) AND (email <> 'x;y'::text))",
        "one_email": 'CREATE UNIQUE INDEX one_email ON shop."Order ""Lines""" USING btree (email NULLS FIRST)'
                     " WHERE (email ~~ '%@shop'::text)",
    }
    # index_strategy = rebuild drops the plain one for the load and builds it again after.
    loader.write("orders2.csv", csv_rows(400))
    second = loader.run()
    assert (second.counts.inserted, second.counts.unchanged) == (200, 200)
    assert definitions(sql) == made
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    assert sql("SELECT count(*) FROM pg_index WHERE NOT indisvalid") == [(0,)]


def test_the_sales_example_declares_its_two_indexes_and_migrate_adds_them_back(tmp_path, db_url: str, sql) -> None:
    from pgstage import migrate
    from pgstage.demo import run_demo, specs_dir

    run_demo(tmp_path / "demo", days=1, orders_per_day=900, db=db_url)
    wanted = {
        "orders_source_ordered_at": "CREATE INDEX orders_source_ordered_at ON sales.orders USING btree"
                                    " (source, ordered_at DESC)",
        "orders_customer_email": "CREATE INDEX orders_customer_email ON sales.orders USING btree (customer_email)"
                                 " WHERE (customer_email IS NOT NULL)",
    }
    found = "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid" \
            " WHERE i.indrelid = 'sales.orders'::regclass AND NOT i.indisprimary AND i.indisvalid"
    assert dict(sql(found)) == wanted
    sql("DROP INDEX sales.orders_source_ordered_at, sales.orders_customer_email")
    spec = specs_dir() / "shopify.toml"
    plan = migrate.plan(spec, db=db_url)
    assert [(c.kind, c.subject) for c in plan.changes if c.kind == "add_index"] == [
        ("add_index", "orders_source_ordered_at"), ("add_index", "orders_customer_email")]
    migrate.apply(spec, db=db_url)
    assert dict(sql(found)) == wanted
    assert [c.kind for c in migrate.plan(spec, db=db_url).changes] == []
