"""`pgstage init`: the drafted spec has the types PostgreSQL decided, and it loads its own sample
without a single reject."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import pgstage
from pgstage.cli import app
from pgstage.init import column_names, sniff_delimiter, snake_case, toml_string
from pgstage.spec import load_spec

runner = CliRunner()

ORDERS = (
    'Order ID,Customer Email,Order Total,Qty,Created At,Updated at,Ship Date,Zip,Gift,Ref,Score,Note\n'
    '100001,a@x.com,"1,234.50",2,2024-01-15 10:22:01 -0500,2024-01-16 10:00:00,2024-01-17,01234,yes,'
    '6f1c1d3e-8d1b-4c3a-9a57-0f1e2d3c4b5a,1.5,\n'
    '100002,b@x.com,12.00,1,2024-01-15 11:00:00 +0100,0000-00-00 00:00:00,2024-01-18,02345,no,'
    '7f1c1d3e-8d1b-4c3a-9a57-0f1e2d3c4b5a,NaN,hello\n'
    '100003,,99.99,3,2024-01-15T12:00:00Z,2024-01-17 09:30:00,,10001,yes,'
    '8f1c1d3e-8d1b-4c3a-9a57-0f1e2d3c4b5a,2,"multi\nline"\n'
    '100004, c@x.com ,5,40000,2024-01-16 08:00:00 -0500,,2024-01-19,10002,no,'
    '9f1c1d3e-8d1b-4c3a-9a57-0f1e2d3c4b5a,3.25,x\n'
)

SEMICOLONS = (
    "sku;label;price;stock;active;restock on\n"
    "A-1;Äpfel;3.50;10;t;2024-03-01\n"
    "A-2;Birnen, grün;1,234.00;0;f;today\n"
    'A-3;"Kirschen; rot";0.99;-5;t;\n'
)

ODD_NAMES = (
    '"Kunden ""Nr""",Straße,Größe (cm),back\\slash,名前,2nd value,ID,id\n'
    "K1,Hauptstraße 1,180,a\\b,太郎,x,1,10\n"
    "K2,Nebenweg 2,175.5,c,花子,y,2,20\n"
)


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


def draft(root: Path, db_url: str, name: str, content: str, *args: str, spec: str = "spec.toml") -> Path:
    """Write a sample, draft its spec with the CLI next to it, and return the spec's path."""
    sample = root / name
    sample.parent.mkdir(parents=True, exist_ok=True)
    sample.write_text(content, encoding="utf-8", newline="")
    code, out = invoke("init", str(sample), "--output", str(root / spec), "--db", db_url, *args)
    assert code == 0, out
    return root / spec


def columns_of(spec_path: Path) -> dict[str, tuple[str, str | None, bool]]:
    spec = load_spec(spec_path)
    return {name: (c.type, c.from_, c.required) for name, c in spec.columns.items()}


def assert_loads_itself(spec_path: Path, db_url: str, records: int) -> None:
    report = pgstage.run(spec_path, db=db_url)
    assert report.status == "succeeded", report.message
    assert report.counts.as_dict() == {"read": records, "rejected": 0, "valid": records, "duplicate": 0,
                                       "inserted": records, "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert report.rejects_by_rule == {}


def test_messy_orders(tmp_path: Path, db_url: str, sql) -> None:
    spec_path = draft(tmp_path, db_url, "orders.csv", ORDERS)
    spec = load_spec(spec_path)
    assert (spec.pipeline.name, spec.pipeline.target, spec.pipeline.key, spec.pipeline.strategy) == (
        "orders", "public.orders", ("order_id",), "upsert")
    assert (spec.source.path, spec.source.delimiter, spec.load.max_reject_ratio) == ("orders.csv", ",", 0.0)
    assert columns_of(spec_path) == {
        "order_id": ("bigint", "Order ID", True),              # the key: required
        "customer_email": ("text", "Customer Email", False),
        "order_total": ("money_cents", "Order Total", False),  # 4 records are too few to require a value
        "qty": ("bigint", "Qty", False),                       # integers are bigint
        "created_at": ("timestamptz", "Created At", False),    # offsets: timestamptz
        "updated_at": ("timestamp", "Updated at", False),      # no offsets; 0000-00-00 is NULL
        "ship_date": ("date", "Ship Date", False),
        "zip": ("text", "Zip", False),                         # leading zeros stay text
        "gift": ("boolean", "Gift", False),
        "ref": ("uuid", "Ref", False),
        "score": ("text", "Score", False),                     # NaN is not a number pgstage accepts
        "note": ("text", "Note", False),
    }
    assert spec.columns["customer_email"].normalize == ("trim",)
    assert spec.columns["updated_at"].zero_is_null
    text = spec_path.read_text(encoding="utf-8")
    assert ("# key: the smallest combination of columns unique and never empty in the 4 sampled records\n"
            "#   (identifiers first, then dates and times with categories; never measures)\n"
            "#   also unique: ref, created_at, zip\n"
            "#   unique in the sample but measures, not keys: order_total (money_cents), qty (bigint)\n"
            'key = ["order_id"]\n') in text
    assert '# "Customer Email": 3 values, 1 empty; e.g. "a@x.com", "b@x.com", " c@x.com "' in text
    assert '# "Note": 3 values, 1 empty; e.g. "hello", "multi\\nline", "x"' in text
    assert "(all 4 records)" in text
    assert_loads_itself(spec_path, db_url, 4)
    assert sql("SELECT order_id, order_total, created_at::text, updated_at::text FROM public.orders ORDER BY 1") == [
        (100001, 123450, "2024-01-15 15:22:01+00", "2024-01-16 10:00:00"),
        (100002, 1200, "2024-01-15 10:00:00+00", None),
        (100003, 9999, "2024-01-15 12:00:00+00", "2024-01-17 09:30:00"),
        (100004, 500, "2024-01-16 13:00:00+00", None),
    ]


def test_semicolons_sniffed_and_special_values_keep_text(tmp_path: Path, db_url: str) -> None:
    spec_path = draft(tmp_path, db_url, "data/stock-2024.csv", SEMICOLONS, "--name", "stock")
    spec = load_spec(spec_path)
    assert (spec.source.delimiter, spec.source.path) == (";", "data/stock-2024.csv")  # relative to the spec
    assert (spec.pipeline.name, spec.pipeline.target, spec.pipeline.key) == ("stock", "public.stock_2024", ("sku",))
    assert columns_of(spec_path) == {
        "sku": ("text", "sku", True),
        "label": ("text", "label", False),
        "price": ("money_cents", "price", False),           # a price with thousands separators: money
        "stock": ("bigint", "stock", False),
        "active": ("boolean", "active", False),
        "restock_on": ("text", "restock on", False),        # `today` must not make it a date
    }
    assert_loads_itself(spec_path, db_url, 3)


def test_quotes_backslashes_and_non_ascii_in_header_names(tmp_path: Path, db_url: str) -> None:
    spec_path = draft(tmp_path, db_url, "kunden.csv", ODD_NAMES)
    assert columns_of(spec_path) == {
        "kunden_nr": ("text", 'Kunden "Nr"', True),
        "strasse": ("text", "Straße", False),
        "grosse_cm": ("numeric", "Größe (cm)", False),
        "back_slash": ("text", "back\\slash", False),
        "column_5": ("text", "名前", False),
        "col_2nd_value": ("text", "2nd value", False),
        "id": ("bigint", "ID", False),
        "id_2": ("bigint", "id", False),
    }
    text = spec_path.read_text(encoding="utf-8")
    assert 'kunden_nr = { from = "Kunden \\"Nr\\"", type = "text", required = true }' in text
    assert 'back_slash = { from = "back\\\\slash", type = "text" }' in text
    assert load_spec(spec_path).pipeline.key == ("kunden_nr",)
    assert_loads_itself(spec_path, db_url, 2)


def test_prints_without_output_and_refuses_to_overwrite(tmp_path: Path, db_url: str) -> None:
    sample = tmp_path / "orders.csv"
    sample.write_text(ORDERS, encoding="utf-8", newline="")
    code, out = invoke("init", str(sample), "--db", db_url, "--target", "sales.orders")
    assert code == 0 and out.startswith("# Drafted by `pgstage init` from orders.csv")
    assert 'target = "sales.orders"' in out and f"path = {toml_string(sample.as_posix())}" in out
    spec = tmp_path / "spec.toml"
    spec.write_text("keep me")
    code, out = invoke("init", str(sample), "--db", db_url, "--output", str(spec))
    assert code == 2 and "already exists" in out and "--force" in out
    assert spec.read_text() == "keep me"
    code, out = invoke("init", str(sample), "--db", db_url, "--output", str(spec), "--force", "--sample-rows", "2")
    assert code == 0 and "(the first 2 records)" in spec.read_text(encoding="utf-8")


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    ("", "the file is empty: no header and no records"),
    ("\n\n", "the file is empty: no header and no records"),
])
def test_bad_samples_exit_2(tmp_path: Path, db_url: str, content: str | None, message: str) -> None:
    sample = tmp_path / "sample.csv"
    if content is not None:
        sample.write_text(content)
    code, out = invoke("init", str(sample), "--db", db_url, "--output", str(tmp_path / "spec.toml"))
    assert code == 2 and message in out and "Traceback" not in out, out
    assert not (tmp_path / "spec.toml").exists()


def test_sniff_delimiter(tmp_path: Path) -> None:
    cases = {"a\tb\tc\n1\t2\t3\n": "\t", "a|b\n1|2\n": "|", "a,b;c\n1,2;3\n": ",", "a;b;c\n1,5;2;3\n": ";",
             "name\nBob, Jr.\n": ",", "a,b\n": ","}
    for content, expected in cases.items():
        path = tmp_path / "s.csv"
        path.write_text(content)
        assert sniff_delimiter(path) == expected, content


def test_names_and_toml_strings() -> None:
    assert snake_case("Created at") == "created_at"
    assert snake_case("orderID") == "order_id"
    assert snake_case("HTTPStatus") == "http_status"
    assert snake_case("__private") == "private"
    assert snake_case("Ærø Œuvre") == "aero_oeuvre"
    assert column_names(("a", "A", "a ", "", "9")) == ["a", "a_2", "a_3", "column_4", "col_9"]
    assert column_names(("x" * 70, "x" * 70)) == ["x" * 63, "x" * 61 + "_2"]
    assert toml_string('say "hi"\\\n\t\x01é') == '"say \\"hi\\"\\\\\\n\\t\\u0001é"'


def test_a_few_bad_values_keep_text_and_say_why(tmp_path: Path, db_url: str) -> None:
    rows = [f"{n},2024-01-{n:02d} 10:00:00" for n in range(1, 25)] + ["25,2024-02-30 25:61:00"]
    spec_path = draft(tmp_path, db_url, "events.csv", "n,seen at\n" + "\n".join(rows) + "\n")
    assert columns_of(spec_path)["seen_at"] == ("text", "seen at", True)
    assert ('#   1 of 25 values are not valid timestamp (e.g. "2024-02-30 25:61:00"); they keep this column text:'
            ' with type = "timestamp" they would be rejected') in spec_path.read_text(encoding="utf-8")
    assert_loads_itself(spec_path, db_url, 25)


def test_roles_and_money_names() -> None:
    from pgstage._init_keys import role
    from pgstage._init_types import plainly_money, small_code

    assert [role(n, k) for n, k in [("id", "bigint"), ("order_id", "bigint"), ("iso_code", "text"), ("sku", "text"),
                                   ("ref", "uuid"), ("anything", "uuid"), ("station_id", "numeric"),
                                   ("day", "date"), ("year", "integer"), ("seen_at", "timestamptz"),
                                   ("region", "text"), ("count", "bigint"), ("lat", "numeric"), ("active", "boolean"),
                                   ("total", "money_cents")]] == [
        "identifier", "identifier", "identifier", "identifier", "identifier", "identifier", "identifier",
        "time", "time", "time", "category", "measure", "measure", "measure", "measure"]
    assert plainly_money("order_total", "Order Total", False) and plainly_money("fee", "fee", False)
    assert plainly_money("price", "Price (€)", False) and plainly_money("price_usd", "price_usd", False)
    assert plainly_money("price", "price", True)                  # 1,234.00: only money_cents reads it
    assert not plainly_money("price", "price", False) and not plainly_money("close", "Close", False)
    assert not plainly_money("reading", "reading", True)
    assert small_code("status_code") and small_code("year") and not small_code("population") and not small_code("age_0_4")


def test_a_price_with_a_currency_is_money_and_one_without_is_numeric(tmp_path: Path, db_url: str, sql) -> None:
    spec_path = draft(tmp_path, db_url, "prices.csv", "sku,Price (€),price,Amount\nA,1.50,1.50,2.00\nB,12.00,12.00,3.10\n")
    assert {n: t for n, (t, _, _) in columns_of(spec_path).items()} == {
        "sku": "text", "price": "money_cents", "price_2": "numeric", "amount": "money_cents"}
    assert_loads_itself(spec_path, db_url, 2)
    assert sql("SELECT sku, price, price_2::text, amount FROM public.prices ORDER BY 1") == [
        ("A", 150, "1.50", 200), ("B", 1200, "12.00", 310)]


def test_slash_dates_say_which_date_style_read_them(tmp_path: Path, db_url: str, sql) -> None:
    spec_path = draft(tmp_path, db_url, "visits.csv", "visit_id,visited\n1,01/02/2024\n2,12/31/2024\n")
    assert columns_of(spec_path)["visited"] == ("date", "visited", False)
    assert ("#   dates like 01/02/2024 were read with DateStyle MDY (this server's): a run on a server with another"
            " DateStyle reads them otherwise; give `format` if the file's order is fixed\n"
            'visited = { from = "visited", type = "date" }') in spec_path.read_text(encoding="utf-8")
    assert_loads_itself(spec_path, db_url, 2)
    assert sql("SELECT visited::text FROM public.visits ORDER BY 1") == [("2024-01-02",), ("2024-12-31",)]
