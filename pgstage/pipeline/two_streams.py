"""Stage a file's first two batches on two COPY streams at once.

Staging one batch is one COPY, one backend, one core: while a plain file's first batch
stages alone, the machine's other core has nothing to do (about 4 s of a 2M-row load,
docs/performance.md). Here a pool session stages batch 1 while this session stages batch 0.

Batch 1 must start at a record boundary and be numbered from the right record, before
batch 0 has told how many records it holds. So the pool job first walks the file the way
staging will cut it: the same reader, the same record-aligned windows (a newline with an
even number of quote characters before it ends a record, so a quoted value spanning lines is
never split), the same batch size, each window's records counted with the same rules (blank
lines are not records). Where that walk ends batch 0 is where batch 1 starts.

The walk is a prediction, and it is checked: when batch 0 ends, its last byte and its last
record number must be exactly the predicted ones. Where they are not (a file COPY reads
differently from the quote rule: broken quoting, carriage returns alone), batch 1's table is
dropped and the file goes on from batch 0's end, as one stream would have staged it. Nothing
is ever numbered twice or skipped: batches only ever start where the previous one provably
ended.

Anything unusual stages on one stream, as before, with a `one stream` event saying why: a
compressed file or zip member (no seeking, and its stored size says nothing of its
records), a file resumed from a checkpoint, a file of one batch, a pool too busy to start
the second stream before the first one is done.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgstage.pipeline import stage
from pgstage.pipeline.extract import CsvReader, SourceFile, Window
from pgstage.pipeline.extract.compression import sniff
from pgstage.spec import Spec
from pgstage.workers import Workers

Pause = Callable[[psycopg.Connection[Any]], None]
Event = Callable[..., None]

# A blank line (or a CRLF one) outside quotes: not a record in a file of several fields.
_BLANK_LINE = re.compile(rb"(?m)^\r?\n")
# Any blank line at all, quoted or not, found by one regular expression (a blank line at the
# window's start is checked apart). CPython's substring search is slow on newline-dense text:
# `b"\n\n" in data` and `b"\n\r\n" in data` took 28 ms of a 4 MB window where this takes ~7.
_ANY_BLANK_LINE = re.compile(rb"\n\r?\n")


def records_in(data: bytes, quote: bytes, n_fields: int) -> int:
    """How many records a record-aligned window holds, as COPY reads well-formed CSV.

    A newline ends a record when an even number of quote characters precede it in the window
    (the window starts at a record boundary): the newlines of the quoted parts (the pieces of a
    split on the quote character at odd positions) are not record ends. A blank line is not a
    record, except in a one-field file, where it is an empty value.

    The second stream walks half the file through this before it stages anything, so the usual
    window (no blank line) costs two byte counts and, if it quotes anything, one split; a window
    with a blank line anywhere takes the slower exact path, which tells quoted blank lines apart.
    """
    if n_fields > 1 and (data.startswith((b"\n", b"\r\n")) or _ANY_BLANK_LINE.search(data) is not None):
        return _records_around_blank_lines(data, quote)
    ends = data.count(b"\n")
    if quote in data:
        ends -= b"".join(data.split(quote)[1::2]).count(b"\n")
    return ends


def _records_around_blank_lines(data: bytes, quote: bytes) -> int:
    """`records_in` for a window of several fields with a blank line somewhere, perhaps inside quotes."""
    outside = data if quote not in data else b"x".join(data.split(quote)[0::2])
    return outside.count(b"\n") - len(_BLANK_LINE.findall(outside))


@dataclass(frozen=True)
class Split:
    """Where one stream's staging would end batch 0: the size it gives batches, batch 1's first byte and record."""

    batch_rows: int
    byte_offset: int
    record: int


def find_split(spec: Spec, source: SourceFile, batch_rows: int, parallel: int) -> Split | str:
    """Walk the file as `stage.stage_batches` cuts it into its first batch; the split, or why there is none.

    Same reader, same windows, same batch size (`stage.split_size` over the first window), so
    batch 0 staged by one stream ends exactly here unless COPY counts records differently.
    """
    with CsvReader(source.path, spec.source, member=source.member) as reader:
        size = reader.plain_size()
        if size is None:
            return "compressed"
        quote, n_fields = reader.quote, len(reader.header.fields)
        window = reader.next_window(max_lines=batch_rows)
        if window is None:
            return "one batch"
        lines = window.data.count(b"\n")
        rows = stage.split_size(batch_rows, parallel, size - window.offset, window, lines)
        if window.end >= size and lines + 1 < rows:
            # The whole file is in this window and it has fewer line ends than a batch has records (a
            # record ends at one, the last may lack it): one batch, without counting records by the
            # quote rule (2.5 ms for a 5,000-row backfill day, on the GIL that every job shares).
            return "one batch"
        counted, last = records_in(window.data, quote, n_fields), window
        while counted < rows:
            found: Window | None = reader.next_window(max_lines=rows - counted)
            if found is None:
                return "one batch"
            counted += records_in(found.data, quote, n_fields)
            last = found
        if last.end >= size:
            return "one batch"
        return Split(rows, last.end, counted + 1)


class _Abandoned(Exception):
    """The main stream failed: the second one stops at its next window."""


def _second_stream(session: psycopg.Connection[Any], *, spec: Spec, source: SourceFile, file_no: int,
                   table_prefix: str, batch_rows: int, parallel: int, pause: Pause | None,
                   abandon: threading.Event) -> tuple[Split | str, stage.StagedBatch | None]:
    """A pool job: find the split, then stage batch 1 alone from it on the job's session."""
    split = find_split(spec, source, batch_rows, parallel)
    if isinstance(split, str) or abandon.is_set():
        return split, None

    def check_in() -> None:
        if abandon.is_set():
            raise _Abandoned()
        if pause is not None:
            pause(session)

    batches = stage.stage_batches(session, spec, source, file_no=file_no, table_prefix=table_prefix,
                                  start=stage.StartPoint(split.byte_offset, split.record, 1),
                                  batch_rows=split.batch_rows, parallel=1, pause=check_in)
    try:
        return split, next(batches, None)
    finally:
        batches.close()   # one batch only: this session's reader is closed before anything more is read


def _why_not(spec: Spec, source: SourceFile, start: stage.StartPoint, batch_rows: int) -> str | None:
    """Why a file stages on one stream, known without reading it; None if it may take two."""
    if start != stage.StartPoint():
        return "resumed"
    if source.member is not None or sniff(source.path) != "plain":
        return "compressed"
    # A record takes at least one byte (its newline), and a first batch at least this many records.
    if source.size <= min(batch_rows, stage.MIN_SPLIT_RECORDS):
        return "one batch"
    return None


def applies(spec: Spec) -> bool:
    """Whether a spec's files are considered for two streams at all: CSV, and a pool of two sessions or more."""
    return spec.source.kind == "csv" and spec.load.workers >= 2


def stage_file(conn: psycopg.Connection[Any], pool: Workers, spec: Spec, source: SourceFile, *, file_no: int,
               table_prefix: str, start: stage.StartPoint, batch_rows: int, parallel: int,
               since: datetime | None = None, pause: Pause | None = None,
               event: Event | None = None) -> Iterator[stage.StagedBatch]:
    """A file's staged batches, in order, as `stage.stage_batches` gives them, the first two staged at once.

    `conn` is the caller's session (batch 0 and everything after batch 1); `pool` lends one
    session for batch 1; `pause` is the throttle, called with the session about to COPY;
    `event(name, **fields)` logs how the file was staged. Sources other than CSV files (and `since`,
    a postgres source's watermark) go to `stage.stage_batches` as they are.
    """
    def stream(begin: stage.StartPoint, rows: int, spread: int) -> Generator[stage.StagedBatch, None, None]:
        return stage.stage_batches(conn, spec, source, file_no=file_no, table_prefix=table_prefix, start=begin,
                                   batch_rows=rows, parallel=spread, since=since, pause=None if pause is None else lambda: pause(conn))

    def say(name: str, **fields: Any) -> None:
        if event is not None:
            event(name, file=source.name, **fields)

    if not applies(spec):
        yield from stream(start, batch_rows, parallel)
        return
    why = _why_not(spec, source, start, batch_rows)
    if why is not None:
        say("one stream", why=why)
        yield from stream(start, batch_rows, parallel)
        return
    abandon = threading.Event()
    second: Future[tuple[Split | str, stage.StagedBatch | None]] = pool.submit(
        lambda session: _second_stream(session, spec=spec, source=source, file_no=file_no, table_prefix=table_prefix,
                                       batch_rows=batch_rows, parallel=parallel, pause=pause, abandon=abandon))
    main = stream(start, batch_rows, parallel)
    settled = False
    try:
        first = next(main, None)
        if first is None:   # no record at all; the job finds none either (and is waited for below)
            return
        if second.cancel():   # the pool never started the job: batch 0 is staged, go on as one stream
            settled = True
            say("one stream", why="pool busy")
            yield first
            yield from main
            return
        yield first    # its validation starts now, while batch 1 may still be staging
        split, batch = second.result()
        settled = True
        if isinstance(split, str):
            say("one stream", why=split)
            yield from main
            return
        main.close()
        if (first.byte_end, first.record_end + 1) != (split.byte_offset, split.record):
            if batch is not None:
                stage.drop(conn, batch.table)
            say("one stream", why=f"batch 0 ended at byte {first.byte_end}, record {first.record_end}, not at byte"
                                  f" {split.byte_offset}, record {split.record - 1} as predicted:"
                                  " batch 1 staged again after it")
            yield from stream(stage.StartPoint(first.byte_end, first.record_end + 1, first.batch_no + 1),
                              split.batch_rows, 1)
            return
        if batch is None:   # the file ended where batch 1 would have started
            return
        say("two streams", batch=batch.batch_no, from_byte=split.byte_offset, from_record=split.record)
        yield batch
        yield from stream(stage.StartPoint(batch.byte_end, batch.record_end + 1, batch.batch_no + 1),
                          split.batch_rows, 1)
    finally:
        main.close()
        if not settled:   # batch 0 failed, or the file was empty: stop batch 1 and wait for the job to let go
            abandon.set()
            try:
                second.result()
            except Exception:   # batch 0's error is the one to report; batch 1's table goes with the run's orphans
                pass
