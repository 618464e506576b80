"""Chunked merges (load.merge_chunk_rows): the same table and counts as one transaction per batch.

The independent expectation is test_property's plain-Python oracle; chunks are checked in
the ledger (one pgstage.chunks row per chunk, the last one with its batch).
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pgstage
from pgstage.pipeline import chunks
from tests import specs
from tests.conftest import assert_identity
from tests.test_property import Row, oracle, rows, write_csv

_examples = itertools.count()
SPEC = specs.template(name="c{n}", target="chunk.t{n}", path="data.csv", columns=specs.ITEMS, strategy="{strategy}",
                      pipeline="{version}",
                      load="max_reject_ratio = 1.0\nbatch_rows = {batch}\nworkers = {workers}\nmerge_chunk_rows = {chunk}")


def load_files(tmp_path: Path, db_url: str, sql: Any, strategy: str, files: list[list[Row]], *, batch: int, chunk: int,
               workers: int = 2) -> list[pgstage.RunReport]:
    n = next(_examples)
    folder = tmp_path / f"c{n}"
    folder.mkdir()
    version = 'version = "v"' if strategy == "upsert_if_newer" else ""
    (folder / "spec.toml").write_text(textwrap.dedent(SPEC.format(n=n, strategy=strategy, version=version, batch=batch,
                                                                  chunk=chunk, workers=workers)))
    expected_table, expected_counts = oracle(strategy, files)
    reports = []
    for records, counts in zip(files, expected_counts):
        write_csv(folder / "data.csv", records)
        report = pgstage.run(folder / "spec.toml", db=db_url, force=True)
        assert_identity(report)
        assert {k: getattr(report.counts, k) for k in counts} == counts
        reports.append(report)
    if any(c["read"] for c in expected_counts):
        got = sql(f"SELECT id, v, amount, note FROM chunk.t{n}")
        assert {r[0]: tuple(r) for r in got} == expected_table
    return reports


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strategy=st.sampled_from(["insert_only", "upsert", "upsert_if_newer"]),
       files=st.lists(st.lists(rows, max_size=25), min_size=1, max_size=3),
       batch=st.integers(3, 30), chunk=st.integers(1, 7))
def test_chunked_merges_give_the_oracle_result(tmp_path: Path, db_url: str, sql, strategy: str, files: list[list[Row]],
                                               batch: int, chunk: int) -> None:
    load_files(tmp_path, db_url, sql, strategy, files, batch=batch, chunk=chunk)


def test_a_key_repeated_in_two_chunks_is_merged_once_by_its_winners_chunk(tmp_path: Path, db_url: str, sql) -> None:
    # One batch of 6 records, chunks of 2: key 1 in chunks 1 and 3 (record 5 wins), key 2 in chunks 1 and 2.
    first = [Row("1", "1", "1.00", "a"), Row("2", "2", "2.00", "b"), Row("2", "3", "3.00", "c"),
             Row("3", "4", "4.00", "d"), Row("1", "5", "5.00", "e"), Row("4", "6", "6.00", "f")]
    second = [Row("1", "7", "5.00", "e"), Row("2", "8", "9.00", "z"), Row("5", "9", "1.00", "n")]
    reports = load_files(tmp_path, db_url, sql, "upsert", [first, second], batch=100, chunk=2, workers=1)
    assert reports[0].counts.as_dict() == {"read": 6, "rejected": 0, "valid": 6, "duplicate": 2, "inserted": 4,
                                           "updated": 0, "unchanged": 0, "stale": 0, "deleted": 0}
    assert reports[1].counts.as_dict() == {"read": 3, "rejected": 0, "valid": 3, "duplicate": 0, "inserted": 1,
                                           "updated": 2, "unchanged": 0, "stale": 0, "deleted": 0}
    # One checkpoint per chunk. First run: records 1-2 write nothing (the winners of keys 1 and 2 are
    # records 5 and 3), 3-4 insert keys 2 and 3, 5-6 keys 1 and 4. Second run: 1-2 update keys 1, 2; 3 inserts 5.
    rows = sql("SELECT run_id, batch_no, record_end, counts->>'inserted', counts->>'updated' FROM pgstage.chunks"
               " ORDER BY run_id, record_end")
    first_run, second_run = reports[0].run_id, reports[1].run_id
    assert rows == [(first_run, 0, 2, "0", "0"), (first_run, 0, 4, "2", "0"), (first_run, 0, 6, "2", "0"),
                    (second_run, 0, 2, "0", "2"), (second_run, 0, 3, "1", "0")]


def test_chunk_ranges_cover_the_batch_once() -> None:
    assert chunks.ranges(1, 10, 3) == [(1, 3), (4, 6), (7, 9), (10, 10)]
    assert chunks.ranges(5, 5, 100) == [(5, 5)]
    assert chunks.ranges(11, 10, 3) == [(11, 10)]   # a resumed batch whose chunks all committed but the last


@given(first=st.integers(1, 1000), length=st.integers(0, 500), size=st.integers(1, 60))
def test_chunk_ranges_partition_the_records(first: int, length: int, size: int) -> None:
    last = first + length - 1
    got = chunks.ranges(first, last, size)
    covered = [r for lo, hi in got for r in range(lo, hi + 1)]
    assert covered == list(range(first, last + 1))
    assert all(hi - lo + 1 <= size for lo, hi in got)


@pytest.mark.parametrize("strategy", ["insert_only", "upsert"])
def test_merge_chunk_rows_must_be_positive(loader, strategy: str) -> None:
    loader.spec(SPEC.format(n=0, strategy=strategy, version="", batch=10, workers=1, chunk=0))
    with pytest.raises(pgstage.SpecError) as err:
        loader.run()
    assert "load.merge_chunk_rows: Input should be greater than 0" in str(err.value)
