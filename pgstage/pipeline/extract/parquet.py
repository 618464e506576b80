"""Parquet as a stream of CSV windows, converted by Arrow's C++ code, never row by row in Python.

Record batches are read a slice at a time (bounded memory whatever the file's size), struct
columns are flattened into dotted names (`customer.address.city`), only the fields the spec
uses are kept, and `pyarrow.csv.write_csv` turns each slice into CSV bytes for the same COPY
path as a CSV file. Nulls are written as unquoted empty fields, which COPY reads as NULL.

A window's "offset" is a row index, not a byte offset: a checkpoint of a Parquet file says
how many rows precede the next batch, and a resumed run skips whole row groups up to it.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgstage.errors import Location, MissingDependency, SourceError
from pgstage.pipeline.extract._closing import Closing
from pgstage.pipeline.extract.compression import sniff
from pgstage.pipeline.extract.csv import Header, Window

WINDOW_ROWS = 65_536


def _arrow() -> tuple[Any, Any, Any]:
    """pyarrow, pyarrow.csv, pyarrow.parquet; an optional extra, imported only for Parquet sources."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
        import pyarrow.parquet
    except ImportError:
        raise MissingDependency("reading Parquet needs pyarrow, which is not installed",
                                hint='pip install "pgstage[parquet]"') from None
    return pyarrow, pyarrow.csv, pyarrow.parquet


def flatten_schema(schema: Any) -> Iterator[tuple[str, str, Any]]:
    """(dotted name, top-level column, type) of every leaf, struct fields expanded, in schema order."""
    pa, _, _ = _arrow()

    def leaves(field: Any, name: str, root: str) -> Iterator[tuple[str, str, Any]]:
        if pa.types.is_struct(field.type):
            for child in field.type:
                yield from leaves(child, f"{name}.{child.name}", root)
        else:
            yield name, root, field.type

    for field in schema:
        yield from leaves(field, field.name, field.name)


class ParquetReader(Closing):
    """Reads one Parquet file as CSV windows of at most WINDOW_ROWS rows.

    `start` resumes at a row index recorded in the ledger. Call `select` with the fields to
    stage before reading windows; their CSV columns come out in that order.
    """

    def __init__(self, path: Path, *, start: int | None = None, member: str | None = None) -> None:
        pa, self._csv, pq = _arrow()
        self._pa = pa
        self.path = path
        self.name = str(path) if member is None else f"{path}!{member}"
        if member is not None or sniff(path) != "plain":
            raise SourceError(f"{self.name}: a Parquet file must be read in place, not from a compressed file or archive",
                              location=Location(file=self.name),
                              hint="Parquet compresses its pages itself: unpack the file and point source.path at the"
                                   " .parquet files")
        try:
            # pre_buffer would read ahead the column chunks of every row group asked for (the
            # whole file): memory would grow with the file. Without it, one row group at a time.
            self._file = pq.ParquetFile(path, pre_buffer=False)
        except (pa.lib.ArrowException, OSError) as exc:
            raise SourceError(f"{self.name}: not a readable Parquet file: {exc}", location=Location(file=self.name),
                              hint="check that source.kind matches the file; fetch it again if it is truncated") from None
        leaves = list(flatten_schema(self._file.schema_arrow))
        self._roots = {name: root for name, root, _ in leaves}
        self._types = {name: leaf for name, _, leaf in leaves}
        self.header = Header(tuple(name for name, _, _ in leaves))
        self.rows = int(self._file.metadata.num_rows)
        self._start = min(start or 0, self.rows)
        self._fields: tuple[str, ...] = ()
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgstage-parquet")
        self._chunk_iter: Iterator[tuple[int, Any, bytes]] | None = None
        self._ahead: Future[tuple[int, Any, bytes] | None] | None = None
        self._head: tuple[int, Any, bytes | None] | None = None

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._file.close()

    def textual(self, name: str) -> bool:
        """Whether a field can be staged as text (lists, maps and unions cannot)."""
        return not self._pa.types.is_nested(self._types[name])

    def select(self, fields: Sequence[str]) -> None:
        """Choose the fields to stage; refuse, all at once, those CSV cannot carry (lists, maps)."""
        nested = [f"{name} ({self._types[name]})" for name in fields if not self.textual(name)]
        if nested:
            raise SourceError(f"{self.name}: {', '.join(nested)}: list, map and union columns cannot be loaded as text",
                              location=Location(file=self.name),
                              hint="pgstage reads scalar fields and fields of structs (by dotted path); flatten lists"
                                   " upstream or load another field")
        self._fields = tuple(fields)

    def _record_batches(self) -> Iterator[Any]:
        """Record batches of the selected fields from row `start` on, whole row groups skipped."""
        metadata = self._file.metadata
        first_group, skip = 0, self._start
        while first_group < metadata.num_row_groups and skip >= metadata.row_group(first_group).num_rows:
            skip -= metadata.row_group(first_group).num_rows
            first_group += 1
        groups = list(range(first_group, metadata.num_row_groups))
        if not groups or not self._fields:
            return
        roots = list(dict.fromkeys(self._roots[f] for f in self._fields))
        columns = None if any("." in r for r in roots) else roots   # a dotted top-level name would read as a path
        batches = self._file.iter_batches(batch_size=WINDOW_ROWS, row_groups=groups, columns=columns, use_threads=True)
        for batch in batches:
            if skip >= batch.num_rows:
                skip -= batch.num_rows
                continue
            yield batch.slice(skip) if skip else batch
            skip = 0

    def _chunks(self) -> Iterator[tuple[int, Any, bytes]]:
        """(first row index, rows, their CSV) in slices of at most WINDOW_ROWS; runs in the worker thread."""
        row = self._start
        batches = self._record_batches()
        while True:
            try:
                batch = next(batches, None)
            except (self._pa.lib.ArrowException, OSError) as exc:
                raise SourceError(f"{self.name}: cannot read rows after row {row}: {exc}",
                                  location=Location(file=self.name, record=row + 1),
                                  hint="the file looks truncated or corrupt; fetch it again") from None
            if batch is None:
                return
            for offset in range(0, batch.num_rows, WINDOW_ROWS):
                rows = batch.slice(offset, WINDOW_ROWS)
                yield row, rows, self._to_csv(rows, row)
                row += rows.num_rows

    def _next_chunk(self) -> tuple[int, Any, bytes | None] | None:
        """The converted chunk the worker prepared, and the order for the one after it.

        Arrow releases the GIL while it decodes and writes CSV, so the next chunk is made
        on the second core while COPY sends this one.
        """
        if self._chunk_iter is None:
            self._chunk_iter = self._chunks()
        if self._ahead is None:
            self._ahead = self._worker.submit(next, self._chunk_iter, None)
        chunk = self._ahead.result()
        self._ahead = self._worker.submit(next, self._chunk_iter, None) if chunk is not None else None
        return chunk

    def next_window(self, max_lines: int | None = None) -> Window | None:
        """CSV bytes of the next (at most max_lines) rows, or None after the last row."""
        if self._head is None:
            self._head = self._next_chunk()
            if self._head is None:
                return None
        row, rows, data = self._head
        if max_lines is not None and rows.num_rows > max_lines:
            # A batch ends inside this chunk: its first rows now, the rest (converted again) next time.
            self._head = (row + max_lines, rows.slice(max_lines), None)
            return Window(row, row + max_lines, self._to_csv(rows.slice(0, max_lines), row))
        self._head = None
        return Window(row, row + rows.num_rows, data if data is not None else self._to_csv(rows, row))

    def _to_csv(self, batch: Any, first_row: int) -> bytes:
        pa = self._pa
        table = pa.Table.from_batches([batch])
        while any(pa.types.is_struct(t) for t in table.schema.types):
            table = table.flatten()   # a null struct makes its fields null
        table = table.select(list(self._fields))
        for i, name in enumerate(self._fields):
            column = table.column(i)
            if pa.types.is_timestamp(column.type) and column.type.tz is not None:
                # The stored value is the UTC instant: written as such with a "Z", ten times faster
                # than Arrow's own formatting, which looks up the time zone for every value.
                text = column.cast(pa.timestamp(column.type.unit)).cast(pa.string())
                table = table.set_column(i, name, pa.compute.binary_join_element_wise(text, "Z", ""))
            elif _is_bytes_or_view(pa, column.type):
                try:
                    table = table.set_column(i, name, column.cast(pa.string()))
                except pa.lib.ArrowInvalid:
                    raise SourceError(f"{self.name}: column {name!r} holds bytes that are not UTF-8 text"
                                      f" (rows {first_row + 1}-{first_row + batch.num_rows})",
                                      location=Location(file=self.name, column=name),
                                      hint="load a text column instead, or convert the bytes upstream (hex, base64)") from None
        out = io.BytesIO()
        try:
            self._csv.write_csv(table, out, self._csv.WriteOptions(include_header=False))
        except pa.lib.ArrowException as exc:
            raise SourceError(f"{self.name}: rows {first_row + 1}-{first_row + batch.num_rows} cannot be written as"
                              f" text: {exc}", location=Location(file=self.name),
                              hint="a column of this type cannot be loaded; load other fields, or convert it upstream") from None
        return out.getvalue()


def _is_bytes_or_view(pa: Any, column_type: Any) -> bool:
    """Binary columns (text by convention, as old Hive and Spark write strings) and string/binary views."""
    views = [getattr(pa.types, f"is_{kind}_view", lambda t: False)(column_type) for kind in ("string", "binary")]
    return (pa.types.is_binary(column_type) or pa.types.is_large_binary(column_type)
            or pa.types.is_fixed_size_binary(column_type) or any(views))
