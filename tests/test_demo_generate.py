"""The demo data generator: deterministic, exact headers, the 50/30/20 split, every fault present.

Pure Python, no database: the loads themselves are tested elsewhere; here we make sure the
input those tests rely on really contains what the specs are meant to cope with.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import re
import sys
import tomllib
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("shopify", "woocommerce", "stripe")
DAYS, ORDERS, SEED = 2, 3000, 1
EXPECTED = {"shopify": 1500, "woocommerce": 900, "stripe": 600}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


def _load_generator() -> ModuleType:
    """The module itself, even while the package around it is still being written."""
    try:
        return importlib.import_module("pgstage.demo.generate")
    except Exception:  # the rest of the package may be mid-edit; this module needs none of it
        name = "_pgstage_demo_generate"
        spec = importlib.util.spec_from_file_location(name, ROOT / "pgstage" / "demo" / "generate.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module


gen = _load_generator()


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("sales")
    gen.generate(directory, days=DAYS, orders_per_day=ORDERS, seed=SEED)
    return directory


def _records(path: Path) -> list[list[str]]:
    """Data records (header dropped); csv.reader keeps quoted newlines inside one record."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))[1:]


def _day_files(out: Path, source: str) -> list[Path]:
    return sorted((out / source).glob("orders_*.csv"))


def test_writes_one_file_per_source_and_day(out: Path) -> None:
    paths = gen.generate(out / "again", days=DAYS, orders_per_day=ORDERS, seed=SEED)
    assert paths == sorted(paths)
    assert [p.relative_to(out / "again").as_posix() for p in paths] == sorted(
        f"{s}/orders_{d}.csv" for s in SOURCES for d in ("2024-01-01", "2024-01-02"))


@pytest.mark.parametrize(("source", "header", "bom"), [
    ("shopify", "Id,Name,Email,Financial Status,Currency,Total,Created at,Updated at", b"\xef\xbb\xbf"),
    ("woocommerce", "Order ID,Order Date,Order Status,Billing Email,Order Total,Order Currency", b""),
    ("stripe", "id,Created (UTC),Amount,Amount Refunded,Currency,Status,Customer Email", b""),
])
def test_header_lines_are_exact(out: Path, source: str, header: str, bom: bytes) -> None:
    for path in _day_files(out, source):
        assert path.read_bytes().startswith(bom + header.encode() + b"\n")
        if not bom:
            assert not path.read_bytes().startswith(b"\xef\xbb\xbf")


def test_same_seed_same_bytes_other_seed_other_bytes(out: Path, tmp_path: Path) -> None:
    same = gen.generate(tmp_path / "same", days=DAYS, orders_per_day=ORDERS, seed=SEED)
    other = gen.generate(tmp_path / "other", days=DAYS, orders_per_day=ORDERS, seed=SEED + 1)
    for path in same:
        original = out / path.relative_to(tmp_path / "same")
        assert path.read_bytes() == original.read_bytes(), path
    assert all(a.read_bytes() != b.read_bytes() for a, b in zip(same, other))


@pytest.mark.parametrize("source", SOURCES)
def test_record_counts_follow_the_split(out: Path, source: str) -> None:
    # New orders exactly; duplicates and re-deliveries add a few percent on top.
    for path in _day_files(out, source):
        assert EXPECTED[source] <= len(_records(path)) <= EXPECTED[source] * 1.05, path


def test_exact_duplicates_within_a_file(out: Path) -> None:
    for source in SOURCES:
        counts = Counter(tuple(r) for path in _day_files(out, source) for r in _records(path))
        assert any(n > 1 for n in counts.values()), source


def test_ragged_rows_only_where_expected(out: Path) -> None:
    widths = {s: Counter(len(r) for p in _day_files(out, s) for r in _records(p)) for s in SOURCES}
    assert set(widths["stripe"]) == {7}
    ragged = sum(n for s, w in [("shopify", 8), ("woocommerce", 6)] for k, n in widths[s].items() if k != w)
    assert ragged >= 1
    assert {7, 9} & set(widths["shopify"]) or {5, 7} & set(widths["woocommerce"])


def _shopify_updated(record: list[str]) -> datetime | None:
    try:
        return datetime.strptime(record[7], "%Y-%m-%d %H:%M:%S %z")
    except (ValueError, IndexError):
        return None


def test_shopify_late_updates_and_stale_replays(out: Path) -> None:
    first, second = (_records(p) for p in _day_files(out, "shopify"))
    delivered = {r[0]: _shopify_updated(r) for r in first if len(r) == 8}
    newer = older = 0
    for record in second:
        before, now = delivered.get(record[0]), _shopify_updated(record)
        if before is not None and now is not None:
            newer += now > before
            older += now < before
    assert newer >= 1 and older >= 1


def test_woocommerce_orders_change_on_a_later_day(out: Path) -> None:
    first, second = (_records(p) for p in _day_files(out, "woocommerce"))
    by_id = {r[0]: r for r in first}
    changed = [r for r in second if r[0] in by_id and r != by_id[r[0]]]
    assert changed
    assert all(r[1] == by_id[r[0]][1] for r in changed if len(r) == 6)  # same order date


def test_every_value_fault_appears(out: Path) -> None:
    rows = {s: [r for p in _day_files(out, s) for r in _records(p)] for s in SOURCES}
    shop, woo, stripe = rows["shopify"], rows["woocommerce"], rows["stripe"]
    shop8 = [r for r in shop if len(r) == 8]
    assert any(r[6] == "not a date" or r[7] == "not a date" or "-02-30 " in r[6] + r[7] for r in shop8)
    assert any(r[1] in ("not a date", "30/02/2024 10:00") for r in woo if len(r) == 6)
    assert any(r[7] == "0000-00-00 00:00:00" for r in shop8)
    assert any(r[1] == "infinity" for r in stripe)
    assert any(r[2] == "NaN" for r in stripe)
    for records, email, total in ((shop8, 2, 5), (woo, 3, 4), (stripe, 6, 2)):
        full = [r for r in records if len(r) > max(email, total)]
        assert any(r[email] == "" for r in full)
        assert any(r[email] and not EMAIL.match(r[email].strip()) for r in full)
        assert any(r[total].startswith("-") for r in full)
    assert any("(at)" in r[email] for records, email in ((shop8, 2), (woo, 3), (stripe, 6)) for r in records)
    assert any("\n" in r[1] for r in shop8)
    assert any(r[4] != r[4].strip().upper() for r in shop8)
    assert any("," in r[4] for r in woo if len(r) == 6)


def test_start_date_and_zero_days(tmp_path: Path) -> None:
    assert gen.generate(tmp_path / "none", days=0, orders_per_day=10) == []
    paths = gen.generate(tmp_path / "one", days=1, orders_per_day=10, start=date(2024, 7, 4))
    assert {p.name for p in paths} == {"orders_2024-07-04.csv"}
    created = _records(tmp_path / "one" / "shopify" / "orders_2024-07-04.csv")[0][6]
    assert created.startswith("2024-07-04 ") and created.endswith(" -0400")  # summer time in New York


SPECS = {s: tomllib.loads((ROOT / "examples" / "sales" / f"{s}.toml").read_text("utf-8")) for s in SOURCES}


def test_specs_agree_on_target_key_and_columns() -> None:
    columns = {s: set(spec["columns"]) for s, spec in SPECS.items()}
    assert columns["shopify"] == columns["woocommerce"] == columns["stripe"] == {
        "source", "source_order_id", "customer_email", "amount_cents", "refunded_cents",
        "currency", "status", "ordered_at", "updated_at"}
    assert {spec["pipeline"]["target"] for spec in SPECS.values()} == {"sales.orders"}
    assert all(spec["pipeline"]["key"] == ["source", "source_order_id"] for spec in SPECS.values())
    assert all(spec["columns"]["source"] == {"const": s} for s, spec in SPECS.items())
    assert all(spec["columns"]["customer_email"]["regex"] == EMAIL.pattern for spec in SPECS.values())
    assert SPECS["shopify"]["pipeline"]["version"] == "updated_at"


@pytest.mark.parametrize("source", SOURCES)
def test_specs_read_fields_the_generator_writes(source: str) -> None:
    spec = SPECS[source]
    assert spec["source"]["path"] == f"data/{source}/orders_{{date}}.csv"
    used = {c["from"] for c in spec["columns"].values() if "from" in c}
    assert used <= set(gen.HEADERS[source])
