"""Hypothesis: for generated CSVs with random faults, the identity holds and the target equals
an independent Python computation of the expected rows, for every strategy.

Windows are shrunk to a few dozen bytes so that quoted newlines, quarantined records and
record numbering cross window boundaries all the time.
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from pgstage.pipeline import merge
from pgstage.pipeline.extract import csv as csv_extract
from tests.conftest import assert_identity
from tests import specs

_examples = itertools.count()
MONEY = re.compile(r"^[+-]?([0-9]{1,3}(,[0-9]{3}){1,4}|[0-9]{1,15})(\.[0-9]{1,2})?$")

text_values = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=12)


@dataclass(frozen=True)
class Row:
    """One generated record: either well-formed fields or a raw ragged line."""

    id: str
    version: str
    amount: str
    note: str
    ragged: bool = False


rows = st.builds(
    Row,
    id=st.sampled_from(["1", "2", "3", "4", "5", "x", ""]),
    version=st.sampled_from(["", "1", "2", "3", "7", "nope"]),
    amount=st.sampled_from(["0", "1.50", "12", "1,234.5", "-3", "abc", "", "NaN"]),
    note=text_values,
    ragged=st.integers(0, 6).map(lambda x: x == 0),
)

SPEC = specs.template(name="p{n}", target="prop.t{n}", path="{glob}", columns=specs.ITEMS, strategy="{strategy}",
                      pipeline="{version}", load="max_reject_ratio = 1.0")


def write_csv(path: Path, records: list[Row]) -> None:
    out = io.StringIO(newline="")
    # CRLF endings: the csv module then quotes values holding a lone CR, as a real exporter must.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(["id", "version", "amount", "note"])
    for r in records:
        if r.ragged:
            out.write(f"{r.id},{r.version}\r\n")
        else:
            writer.writerow([r.id, r.version, r.amount, r.note])
    path.write_text(out.getvalue(), encoding="utf-8", newline="")


def valid_row(r: Row) -> tuple[int, int | None, int, str | None] | None:
    """The oracle's own reading of a record: typed values, or None when pgstage must reject it."""
    if r.ragged or not r.id.isdigit():
        return None
    if r.version and not r.version.isdigit():
        return None
    if not r.amount or not MONEY.match(r.amount):
        return None
    cents = round(float(r.amount.replace(",", "")) * 100)
    if cents < 0:
        return None
    return int(r.id), int(r.version) if r.version else None, cents, r.note or None


def oracle(strategy: str, files: list[list[Row]]) -> tuple[dict[int, tuple[Any, ...]], list[dict[str, int]]]:
    """Apply the files one run at a time, as SPEC §4.5 says, in plain Python."""
    table: dict[int, tuple[Any, ...]] = {}
    all_counts = []
    for records in files:
        valid = [(i, v) for i, r in enumerate(records) if (v := valid_row(r)) is not None]
        best: dict[int, tuple[int, tuple[Any, ...]]] = {}
        for i, v in valid:
            rank = (v[1] is not None, v[1] or 0, i) if strategy == "upsert_if_newer" else (i,)
            if v[0] not in best or rank > best[v[0]][0]:  # type: ignore[operator]
                best[v[0]] = (rank, v)  # type: ignore[assignment]
        counts = {"read": len(records), "rejected": len(records) - len(valid), "valid": len(valid),
                  "duplicate": len(valid) - len(best), "inserted": 0, "updated": 0, "unchanged": 0, "stale": 0}
        for key, (_, v) in best.items():
            old = table.get(key)
            if old is None:
                table[key] = v
                counts["inserted"] += 1
            elif old == v:
                counts["unchanged"] += 1
            elif strategy == "insert_only" or (
                    strategy == "upsert_if_newer" and (v[1] is None or (old[1] is not None and v[1] <= old[1]))):
                counts["stale"] += 1
            else:
                table[key] = v
                counts["updated"] += 1
        all_counts.append(counts)
    return table, all_counts


@pytest.fixture
def tiny_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(csv_extract, "WINDOW_BYTES", 40)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=st.sampled_from(["insert_only", "upsert", "upsert_if_newer"]),
       files=st.lists(st.lists(rows, max_size=25), min_size=1, max_size=3))
def test_identity_and_oracle(tmp_path: Path, db_url: str, sql, tiny_windows: None, strategy: str,
                             files: list[list[Row]]) -> None:
    check_against_oracle(tmp_path, db_url, sql, strategy, files)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=st.sampled_from(["insert_only", "upsert", "upsert_if_newer"]),
       files=st.lists(st.lists(rows, max_size=25), min_size=2, max_size=3))
def test_the_upsert_path_gives_the_oracle_result_too(tmp_path: Path, db_url: str, sql, tiny_windows: None,
                                                    monkeypatch: pytest.MonkeyPatch, strategy: str,
                                                    files: list[list[Row]]) -> None:
    """Merges into a target that holds rows, taken by INSERT … ON CONFLICT whatever the sample says."""
    monkeypatch.setattr(merge, "MIN_WRITE_SHARE", 0.0)
    check_against_oracle(tmp_path, db_url, sql, strategy, files)


def check_against_oracle(tmp_path: Path, db_url: str, sql: Any, strategy: str, files: list[list[Row]]) -> None:
    n = next(_examples)
    folder = tmp_path / f"ex{n}"
    folder.mkdir()
    version = 'version = "v"' if strategy == "upsert_if_newer" else ""
    (folder / "spec.toml").write_text(SPEC.format(n=n, strategy=strategy, version=version, glob="data.csv"))
    expected_table, expected_counts = oracle(strategy, files)
    for records, counts in zip(files, expected_counts):
        write_csv(folder / "data.csv", records)
        report = pgstage.run(folder / "spec.toml", db=db_url, force=True)
        assert_identity(report)
        got = {k: getattr(report.counts, k) for k in counts}
        assert got == counts
    rows_now = sql(f"SELECT id, v, amount, note FROM prop.t{n} ORDER BY id") if any(expected_counts[i]["inserted"] for i in range(len(files))) else []
    assert {r[0]: tuple(r) for r in rows_now} == expected_table
    rejected = sum(c["rejected"] for c in expected_counts)
    assert sql("SELECT count(*) FROM pgstage.rejects j JOIN pgstage.runs r USING (run_id) WHERE r.pipeline = %s",
               (f"p{n}",))[0][0] == rejected


def _boundaries(buf: bytes, quote: bytes) -> list[int]:
    """Offsets just past each newline outside quotes, found one byte at a time (the slow, plain way)."""
    inside, found = False, []
    for i, byte in enumerate(buf):
        if byte == quote[0]:
            inside = not inside
        elif byte == 0x0A and not inside:
            found.append(i + 1)
    return found


@settings(max_examples=400, deadline=None)
@given(buf=st.lists(st.sampled_from([b'"', b"'", b"\n", b"\r", b",", b"a", b"bc"]), max_size=40).map(b"".join),
       quote=st.sampled_from([b'"', b"'"]), first=st.booleans())
def test_record_cut_is_the_first_or_last_newline_outside_quotes(buf: bytes, quote: bytes, first: bool) -> None:
    """Windows end where a byte-by-byte scan of the quotes says a record ends, with or without quotes in them."""
    found = _boundaries(buf, quote)
    expected = (found[0] if first else found[-1]) if found else -1
    assert csv_extract.record_cut(buf, quote, first=first) == expected
    assert csv_extract.record_cut(bytearray(buf), quote, first=first) == expected
