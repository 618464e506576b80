"""Bounded merge transactions (`load.merge_chunk_rows`): a batch merged in chunks of records.

A batch's merge can lock and write a million rows in one transaction: replicas receive its
WAL as one burst, and every row it changed stays locked until it commits. With
`merge_chunk_rows`, the batch is merged a range of record numbers at a time, each range its
own transaction, which commits with a row of `pgstage.chunks` (the range's last record and
its merge counts). The batch's last chunk commits with the batch's own checkpoint (status
`merged`, counts summed over its chunks) and its file's fingerprint, as an unchunked merge.

Exactly-once: a killed run resumes the batch, validates it again (same bytes, same record
numbers) and merges only the records after its last committed chunk, adding the committed
chunks' counts. Which row of a key wins is decided over the whole batch before any chunk
writes (merge._deduplicated), so a key repeated in two chunks is merged once.

Visibility: a reader sees a batch's rows appear chunk by chunk (it already saw a run appear
batch by batch). A strategy whose result must appear whole (replace_partition, scd2) does not
chunk: it merges each batch in one transaction whatever merge_chunk_rows says (`chunkable`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.spec import Spec

if TYPE_CHECKING:   # `chunkable` is asked by every run; the merge's code only by one that merges in chunks
    from pgstage.pipeline.merge import MergeCounts, Records
    from pgstage.pipeline.stage import StagedBatch

# Strategies that write each key of a batch independently of the others: safe to commit in parts.
CHUNKABLE = ("insert_only", "upsert", "upsert_if_newer")


def chunkable(spec: Spec) -> bool:
    return bool(spec.load.merge_chunk_rows) and spec.pipeline.strategy in CHUNKABLE


def ranges(first: int, last: int, size: int) -> list[Records]:
    """[first, last] cut into ranges of `size` record numbers; at least one (possibly empty) range."""
    if last < first:
        return [(first, last)]
    return [(lo, min(lo + size - 1, last)) for lo in range(first, last + 1, size)]


def add(a: MergeCounts, b: MergeCounts) -> MergeCounts:
    return type(a)(**{f.name: getattr(a, f.name) + getattr(b, f.name) for f in fields(a)})


def committed(conn: psycopg.Connection[Any], run_id: int, batch: StagedBatch) -> tuple[int | None, MergeCounts]:
    """The last record of the batch's committed chunks (None: none yet) and their summed counts."""
    rows = execute(conn, sql.SQL(
        "SELECT record_end, counts FROM pgstage.chunks WHERE run_id = %s AND file = %s AND sha256 = %s"
        " AND batch_no = %s AND record_end BETWEEN %s AND %s ORDER BY record_end"),
        (run_id, batch.source.name, batch.source.sha256, batch.batch_no, batch.record_start, batch.record_end),
        label="chunks: committed").fetchall()
    from pgstage.pipeline.merge import MergeCounts

    total = MergeCounts(distinct=0, inserted=0, updated=0, unchanged=0, stale=0)
    for _, counts in rows:
        total = add(total, MergeCounts(**counts))
    return (int(rows[-1][0]) if rows else None), total


def record(conn: psycopg.Connection[Any], run_id: int, batch: StagedBatch, record_end: int, counts: MergeCounts) -> None:
    """The chunk's checkpoint, in the chunk's transaction."""
    execute(conn, sql.SQL(
        "INSERT INTO pgstage.chunks (run_id, file, sha256, batch_no, record_end, counts) VALUES (%s, %s, %s, %s, %s, %s)"),
        (run_id, batch.source.name, batch.source.sha256, batch.batch_no, record_end, json.dumps(asdict(counts))),
        label="chunks: checkpoint")


def run_chunks(conn: psycopg.Connection[Any], run_id: int) -> list[dict[str, Any]]:
    """Every committed merge chunk of the run, in file and record order, for `pgstage show`."""
    cursor = execute(conn, sql.SQL("SELECT file, batch_no, record_end, counts, committed_at FROM pgstage.chunks"
                                   " WHERE run_id = %s ORDER BY file, batch_no, record_end"), (run_id,),
                     label="chunks: of a run")
    return [{"file": f, "batch_no": b, "record_end": end, "counts": counts, "committed_at": at}
            for f, b, end, counts, at in cursor.fetchall()]
