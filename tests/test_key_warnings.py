"""The run guard: a run in which most valid records collapse on the key of a strategy without
`version` says so, in the report, the table, `--dry-run` and `--json`, though it succeeds."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from pgstage.cli import app
from pgstage.report import Counts, key_warnings

runner = CliRunner()

# Prices of 3 symbols over 4 days: the key the file needs is (day, symbol), not symbol.
PRICES = "day,symbol,close\n" + "".join(
    f"2024-01-0{d},{s},{10 * d + i}.5\n" for d in range(1, 5) for i, s in enumerate(("AAA", "BBB", "CCC")))

SPEC = """
[pipeline]
name = "prices"
target = "public.prices"
key = {key}
strategy = "{strategy}"
{version}

[source]
path = "prices.csv"

[columns]
day = {{ from = "day", type = "date" }}
symbol = {{ from = "symbol", type = "text" }}
close = {{ from = "close", type = "numeric" }}
"""


def write(tmp_path: Path, key: str, strategy: str = "upsert", version: str = "") -> Path:
    (tmp_path / "prices.csv").write_text(PRICES)
    spec = tmp_path / "spec.toml"
    spec.write_text(textwrap.dedent(SPEC.format(key=key, strategy=strategy, version=version)))
    return spec


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.output


WARNING = '9 of 12 records share a key with a later record: is `key = ["symbol"]` right?'


def test_a_wrong_key_is_said_in_the_table_and_in_json(tmp_path: Path, db_url: str, sql) -> None:
    spec = write(tmp_path, '["symbol"]')
    code, out = invoke("run", str(spec), "--db", db_url)
    assert code == 0, out
    assert f"warning: {WARNING}" in " ".join(out.split())
    assert sql("SELECT symbol, day::text, close::text FROM public.prices ORDER BY 1") == [
        ("AAA", "2024-01-04", "40.5"), ("BBB", "2024-01-04", "41.5"), ("CCC", "2024-01-04", "42.5")]
    code, out = invoke("run", str(spec), "--db", db_url, "--json", "--force")
    doc = json.loads(out)
    assert code == 0 and doc["warnings"] == [WARNING]
    assert doc["rows"] == {"read": 12, "rejected": 0, "valid": 12, "duplicate": 9, "inserted": 0, "updated": 0,
                           "unchanged": 3, "stale": 0, "deleted": 0}


def test_dry_run_warns_before_anything_is_written(tmp_path: Path, db_url: str, sql) -> None:
    spec = write(tmp_path, '["symbol"]')
    code, out = invoke("run", str(spec), "--db", db_url, "--dry-run", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["dry_run"] is True and doc["warnings"] == [WARNING]
    assert sql("SELECT to_regclass('public.prices')") == [(None,)]


def test_the_right_key_does_not_warn(tmp_path: Path, db_url: str, sql) -> None:
    code, out = invoke("run", str(write(tmp_path, '["day", "symbol"]')), "--db", db_url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["warnings"] == [] and doc["rows"]["inserted"] == 12
    code, out = invoke("run", str(tmp_path / "spec.toml"), "--db", db_url, "--force")
    assert code == 0 and "warning" not in out
    assert sql("SELECT count(*) FROM public.prices") == [(12,)]


def test_a_versioned_strategy_does_not_warn(tmp_path: Path, db_url: str, sql) -> None:
    """A change feed repeats keys by nature: the version decides, nothing is lost by mistake."""
    spec = write(tmp_path, '["symbol"]', "upsert_if_newer", 'version = "day"')
    code, out = invoke("run", str(spec), "--db", db_url, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["warnings"] == [] and doc["rows"]["duplicate"] == 9, out
    assert sql("SELECT symbol, day::text FROM public.prices ORDER BY 1") == [
        ("AAA", "2024-01-04"), ("BBB", "2024-01-04"), ("CCC", "2024-01-04")]


def test_key_warnings_threshold_and_spelling() -> None:
    assert key_warnings(Counts(read=560, valid=560, duplicate=555, inserted=5), ("symbol",), None) == (
        '555 of 560 records share a key with a later record: is `key = ["symbol"]` right?',)
    assert key_warnings(Counts(read=10, valid=10, duplicate=5, inserted=5), ("a",), None) == ()   # half: not more
    assert key_warnings(Counts(read=10, valid=10, duplicate=6, inserted=4), ("a",), "v") == ()
    assert key_warnings(Counts(read=10, valid=10, duplicate=6, inserted=4), (), None) == ()
    assert key_warnings(Counts(read=3, valid=3, duplicate=2, inserted=1), ('say "x"', "b\\c"), None) == (
        '2 of 3 records share a key with a later record: is `key = ["say \\"x\\"", "b\\\\c"]` right?',)


@given(st.integers(0, 10_000), st.integers(0, 10_000), st.lists(st.text(min_size=1), min_size=1, max_size=3))
def test_key_warnings_exactly_above_half(valid: int, duplicate: int, key: list[str]) -> None:
    duplicate = min(duplicate, valid)
    counts = Counts(read=valid, valid=valid, duplicate=duplicate, inserted=valid - duplicate)
    assert bool(key_warnings(counts, tuple(key), None)) == (2 * duplicate > valid)
