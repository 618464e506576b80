"""`pgstage init` then `pgstage run` on real-world-shaped samples (tests/init_corpus/, README there):
each drafted spec has the expected key, types, null markers and required flags, and loads every
record of its own sample: no reject, no duplicate, and a target equal to the file read by Python."""

from __future__ import annotations

import csv
import random
import shutil
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql as psql
from typer.testing import CliRunner

import pgstage
from pgstage.cli import app
from pgstage._init_types import MARKERS
from pgstage.init import KEYLESS_STRATEGY, draft_spec
from pgstage.spec import Spec, load_spec

CORPUS = Path(__file__).parent / "init_corpus"
runner = CliRunner()


@dataclass(frozen=True)
class Expected:
    key: tuple[str, ...]
    types: dict[str, str]
    nulls: tuple[str, ...] = ()
    required: frozenset[str] = field(default_factory=frozenset)   # besides the key columns
    strategy: str = "upsert"


CASES: dict[str, Expected] = {
    # R's write.csv: a row-names column headed "", NA for missing; (Month, Day) is the key, the
    # row number is not (the next export numbers from 1 again).
    "r_airquality.csv": Expected(("month", "day"), {
        "column_1": "bigint", "ozone": "bigint", "solar_r": "bigint", "wind": "numeric", "temp": "bigint",
        "month": "integer", "day": "integer"}, nulls=("NA",)),
    # No column is unique; (station_id, date) is. `-` is a missing reading.
    "weather_stations.csv": Expected(("station_id", "date"), {
        "station_id": "text", "date": "date", "temp_c": "numeric", "precip_mm": "numeric", "station_name": "text"},
        nulls=("-",)),
    # The only unique single column is the generation figure, a measure: (date, fuel) is the key.
    "generation_by_fuel.csv": Expected(("date", "fuel_type"), {
        "date": "date", "fuel_type": "text", "generation_m_wh": "numeric", "share": "bigint"}, nulls=("#N/A",)),
    # A statistics portal's wide table of counts, `;`-separated, `-` for suppressed cells: bigint counts.
    "population_wide.csv": Expected(("year", "region"), {
        "year": "integer", "region": "text", **{c: "bigint" for c in (
            "age_0_4", "age_5_9", "age_10_14", "age_15_19", "age_20_24", "age_25_44", "age_45_64", "age_65")},
        "total": "bigint"}, nulls=("-",)),
    # Dates written `Jan 3 2000`; prices with two decimals are numeric, not money.
    "stock_daily.csv": Expected(("date",), {
        "date": "date", "open": "numeric", "high": "numeric", "low": "numeric", "close": "numeric",
        "volume": "bigint"}),
    # One day of quotes: symbol alone is unique in the file, but the next day's file would overwrite it.
    "quotes_one_day.csv": Expected(("trade_date", "symbol"), {
        "trade_date": "date", "symbol": "text", "price": "numeric", "volume": "bigint"}),
    # "NA" is Namibia here: no typed column holds it, so it is a value, not a null marker.
    "countries.csv": Expected(("iso_code",), {
        "iso_code": "text", "name": "text", "population": "bigint", "capital": "text"}),
    # A Python export: None and nan for missing values; a monthly fee is money.
    "users_python.csv": Expected(("user_id",), {
        "user_id": "bigint", "signup_date": "date", "plan": "text", "monthly_fee": "money_cents",
        "last_login": "timestamp", "referrer": "text"}, nulls=("None", "nan")),
    # 1,200 records: large enough that never-empty columns are required.
    "sensor_readings.csv": Expected(("sensor_id", "reading_at"), {
        "sensor_id": "text", "reading_at": "timestamptz", "value": "numeric", "unit": "text", "note": "text"},
        nulls=("N/A",), required=frozenset({"unit"})),
    # Observations with no unique combination at all: appended, never collapsed.
    "bird_observations.csv": Expected((), {
        "date": "date", "site": "text", "species": "text", "count": "bigint"}, strategy=KEYLESS_STRATEGY),
}


def draft(tmp_path: Path, db_url: str, name: str) -> Path:
    shutil.copy(CORPUS / name, tmp_path / name)
    result = runner.invoke(app, ["init", str(tmp_path / name), "--output", str(tmp_path / "spec.toml"), "--force",
                                 "--db", db_url])
    assert result.exit_code == 0, result.output
    return tmp_path / "spec.toml"


def python_value(kind: str, text: str) -> Any:
    """The value a column should hold, read by Python from the sample's text (the formats the corpus uses)."""
    if kind in ("bigint", "integer"):
        return int(text)
    if kind == "numeric":
        return Decimal(text)
    if kind == "money_cents":
        return int(Decimal(text.replace(",", "")) * 100)
    if kind == "date":
        try:
            return date.fromisoformat(text)
        except ValueError:
            return datetime.strptime(text, "%b %d %Y").date()
    if kind in ("timestamp", "timestamptz"):
        return datetime.fromisoformat(text)
    return text


def expected_rows(path: Path, spec: Spec) -> list[tuple[Any, ...]]:
    """Every record of the sample as the target should hold it: markers and empty fields are NULL."""
    with path.open(newline="", encoding="utf-8") as f:
        records = list(csv.reader(f, delimiter=spec.source.delimiter))
    header, body = records[0], records[1:]
    rows = []
    for record in body:
        fields = dict(zip(header, record))
        row = []
        for column in spec.columns.values():
            text = fields[column.from_ or ""].strip()
            row.append(None if text == "" or text in spec.source.null else python_value(column.type, text))
        rows.append(tuple(row))
    return rows


@pytest.mark.parametrize("name", list(CASES))
def test_init_then_run_loads_every_record(tmp_path: Path, db_url: str, sql, name: str) -> None:
    expected = CASES[name]
    spec_path = draft(tmp_path, db_url, name)
    spec = load_spec(spec_path)
    assert (tuple(spec.pipeline.key or ()), spec.pipeline.strategy) == (expected.key, expected.strategy)
    assert {n: c.type for n, c in spec.columns.items()} == expected.types
    assert spec.source.null == expected.nulls
    assert {n for n, c in spec.columns.items() if c.required} == set(expected.key) | expected.required
    rows = expected_rows(tmp_path / name, spec)
    report = pgstage.run(spec_path, db=db_url)
    assert report.status == "succeeded", report.message
    n = len(rows)
    assert report.counts.as_dict() == {"read": n, "rejected": 0, "valid": n, "duplicate": 0, "inserted": n,
                                       "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert report.warnings == ()
    loaded = sql(psql.SQL("SELECT {} FROM {}").format(psql.SQL(", ").join(map(psql.Identifier, spec.columns)),
                                                      psql.Identifier(*spec.target)).as_string())
    assert sorted(loaded, key=repr) == sorted(rows, key=repr)


def test_keyless_draft_says_why_and_appends(tmp_path: Path, db_url: str) -> None:
    """The draft says why it has no key, and appends."""
    text = draft(tmp_path, db_url, "bird_observations.csv").read_text(encoding="utf-8")
    assert ("# no key: no combination of up to 3 identifier, date/time or category columns is unique and never"
            " empty in the 60 sampled records (tried: date, site, species).") in text
    assert 'strategy = "append"\n' in text and "\nkey = " not in text


def test_marker_found_only_among_text_stays_a_value(tmp_path: Path, db_url: str, sql) -> None:
    text = draft(tmp_path, db_url, "countries.csv").read_text(encoding="utf-8")
    assert "null = " not in text
    assert pgstage.run(tmp_path / "spec.toml", db=db_url).status == "succeeded"
    assert sql("SELECT name FROM public.countries WHERE iso_code = 'NA'") == [("Namibia",)]


def test_the_next_file_of_a_series_adds_instead_of_overwriting(tmp_path: Path, db_url: str, sql) -> None:
    """The key drafted from one day of quotes keeps the previous day when the next file comes."""
    spec_path = draft(tmp_path, db_url, "quotes_one_day.csv")
    assert pgstage.run(spec_path, db=db_url).counts.inserted == 40
    sample = tmp_path / "quotes_one_day.csv"
    sample.write_text(sample.read_text().replace("2024-03-15", "2024-03-18"))
    report = pgstage.run(spec_path, db=db_url)
    assert (report.counts.inserted, report.counts.updated, report.counts.duplicate) == (40, 0, 0)
    assert sql("SELECT trade_date::text, count(*) FROM public.quotes_one_day GROUP BY 1 ORDER BY 1") == [
        ("2024-03-15", 40), ("2024-03-18", 40)]


def test_draft_explains_key_markers_and_types(tmp_path: Path, db_url: str) -> None:
    text = draft(tmp_path, db_url, "r_airquality.csv").read_text(encoding="utf-8")
    assert ("#   unique in the sample but measures, not keys: column_1 (numbers the records 1, 2, 3, ...:"
            " a row number)\nkey = [\"month\", \"day\"]\n") in text
    assert 'null = ["NA"]\n' in text
    assert ('# "Ozone": 120 values, 33 empty; e.g. "75", "98", "4"\n#   33 "NA" read as NULL (source.null)\n'
            '#   bigint: integers that fit a smaller type now may not next year\n'
            'ozone = { from = "Ozone", type = "bigint" }') in text
    assert "#   integer: the name says a small code or a calendar part\nmonth = " in text
    text = draft(tmp_path, db_url, "stock_daily.csv").read_text(encoding="utf-8")
    assert ("#   numeric, not money_cents: nothing in the name or header says money (amount, total, cost, a currency)\n"
            'close = { from = "Close", type = "numeric" }') in text
    text = draft(tmp_path, db_url, "quotes_one_day.csv").read_text(encoding="utf-8")
    assert "#   trade_date holds one value in the sample (one period of a series): it is part of the key\n" in text


# --- any table of these shapes: the draft loads its sample whole, and its key is unique there -------------------

MEASURES = ("count", "reading")
shapes = st.fixed_dictionaries({
    "item_id": st.booleans(),                                # present or not; unique when present
    "region": st.lists(st.sampled_from(["North", "South", "East", "West"]), min_size=1, max_size=4, unique=True),
    "day": st.integers(1, 6),                                # how many distinct days
    "marker": st.sampled_from([m for m in MARKERS if m != "-"] + ["-"]),
    "missing": st.floats(0, 0.4),
})


def _table(shape: dict[str, Any], seed: int) -> tuple[list[str], list[list[str]]]:
    r = random.Random(seed)
    header = ["item_id"] * shape["item_id"] + ["region", "day", "count", "reading", "note"]
    rows = []
    for n in range(r.randint(1, 40)):
        row = [str(1000 + n)] * shape["item_id"] + [
            r.choice(shape["region"]), f"2024-01-0{r.randint(1, shape['day'])}",
            shape["marker"] if r.random() < shape["missing"] else str(r.randint(0, 5_000_000)),
            shape["marker"] if r.random() < shape["missing"] else f"{r.randint(-9999, 9999) / 100:.2f}",
            r.choice(["", "ok", 'say "hi"', "a, b", "late"])]
        rows.append(row)
    r.shuffle(rows)
    return header, rows


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_any_draft_loads_its_sample_and_its_key_is_unique(tmp_path_factory: pytest.TempPathFactory, db_url: str,
                                                          shape: dict[str, Any], seed: int) -> None:
    root = tmp_path_factory.mktemp("drafts")
    header, rows = _table(shape, seed)
    sample = root / "sample.csv"
    with sample.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([header, *rows])
    target = f"public.t_{root.name.replace('-', '_')}"
    text = draft_spec(sample, db=db_url, target=target, output=root / "spec.toml")
    (root / "spec.toml").write_text(text)
    spec = load_spec(root / "spec.toml")
    key = tuple(spec.pipeline.key or ())
    assert not set(key) & set(MEASURES)
    if not key:
        assert spec.pipeline.strategy == KEYLESS_STRATEGY
    else:
        positions = [header.index(spec.columns[k].from_ or "") for k in key]
        assert len({tuple(row[p] for p in positions) for row in rows}) == len(rows)   # plain text: no two spellings
    report = pgstage.run(root / "spec.toml", db=db_url)
    n = len(rows)
    assert (report.status, report.counts.read, report.counts.rejected, report.counts.duplicate,
            report.counts.inserted) == ("succeeded", n, 0, 0, n)
