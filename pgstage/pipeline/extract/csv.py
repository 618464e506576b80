"""CSV as a stream of record-aligned byte windows.

Python never parses the rows here: it finds the header, then cuts the byte stream into
windows that end on a record boundary (a newline outside quotes, found by counting quote
characters, which stays correct for doubled quotes) and hands them to COPY as they are.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pgstage.errors import HeaderMismatch, Location, SourceError
from pgstage.pipeline.extract.files import open_bytes
from pgstage.spec import SourceSection

WINDOW_BYTES = 4 << 20
MAX_WINDOW_BYTES = 256 << 20
BOM = codecs.BOM_UTF8


@dataclass(frozen=True)
class Header:
    """The source's field names in file order (positions "1".."N" when the file has no header)."""

    fields: tuple[str, ...]

    def positions(self, name: str) -> list[int]:
        return [i for i, field in enumerate(self.fields) if field == name]


def record_cut(buf: bytes | bytearray, quote: bytes, *, first: bool = False) -> int:
    """Offset just past the last (or first) newline outside quotes, or -1 when there is none.

    Quote characters come in pairs in well-formed CSV ("" escapes count twice), so a newline
    preceded by an even number of them ends a record.
    """
    if first:
        pos = buf.find(b"\n")
        parity = buf.count(quote, 0, pos) & 1 if pos >= 0 else 0
        while pos >= 0 and parity:
            nxt = buf.find(b"\n", pos + 1)
            if nxt < 0:
                return -1
            parity ^= buf.count(quote, pos, nxt) & 1
            pos = nxt
        return pos + 1 if pos >= 0 else -1
    pos = buf.rfind(b"\n")
    if pos < 0:
        return -1
    parity = buf.count(quote, 0, pos) & 1
    while parity:
        prev = buf.rfind(b"\n", 0, pos)
        if prev < 0:
            return -1
        parity ^= buf.count(quote, prev, pos) & 1
        pos = prev
    return pos + 1


class CsvReader:
    """Reads one CSV file: its header once, then record-aligned windows of raw bytes."""

    def __init__(self, path: Path, options: SourceSection) -> None:
        self.path = path
        self.options = options
        self.quote = options.quote.encode("ascii")
        self._stream: BinaryIO = open_bytes(path)
        self._pending = bytearray()
        self._eof = False
        self.header = self._read_header()

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> "CsvReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self, minimum: int) -> None:
        while not self._eof and len(self._pending) < minimum:
            try:
                chunk = self._stream.read(WINDOW_BYTES)
            except (OSError, EOFError) as exc:
                raise SourceError(f"cannot read {self.path}: {exc}", hint="is the file truncated or not really gzip?") from None
            if not chunk:
                self._eof = True
            self._pending += chunk

    def _read_header(self) -> Header:
        self._fill(WINDOW_BYTES)
        if self._pending.startswith(BOM):
            del self._pending[: len(BOM)]
        if not self._pending.strip():
            raise SourceError(f"{self.path} is empty: no header and no records",
                              location=Location(file=str(self.path)),
                              hint="an empty export usually means the export failed upstream; check the source")
        cut = record_cut(self._pending, self.quote, first=True)
        while cut < 0 and not self._eof:
            self._fill(len(self._pending) + WINDOW_BYTES)
            cut = record_cut(self._pending, self.quote, first=True)
        first = bytes(self._pending[:cut] if cut > 0 else self._pending)
        try:
            text = first.decode(self.options.encoding)
        except UnicodeDecodeError as exc:
            raise HeaderMismatch(f"the first record is not valid {self.options.encoding}: {exc.reason} at byte {exc.start}",
                                 location=Location(file=str(self.path), record=0),
                                 hint="set source.encoding to the file's encoding (latin-1, cp1252, ...)") from None
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter,
                               quotechar=self.options.quote))
        fields = tuple(rows[0]) if rows else ()
        if not self.options.header:
            return Header(tuple(str(i + 1) for i in range(len(fields))))
        del self._pending[: len(first)]
        return Header(fields)

    def windows(self) -> Iterator[bytes]:
        """Record-aligned byte windows of about WINDOW_BYTES, in file order."""
        while True:
            self._fill(WINDOW_BYTES)
            if not self._pending:
                return
            cut = record_cut(self._pending, self.quote)
            while cut < 0 and not self._eof and len(self._pending) < MAX_WINDOW_BYTES:
                self._fill(len(self._pending) + WINDOW_BYTES)
                cut = record_cut(self._pending, self.quote)
            if cut < 0:
                if self._eof or len(self._pending) >= MAX_WINDOW_BYTES:
                    # No record boundary left: an unterminated quote runs to here. Hand it all
                    # over; COPY fails on it and the quarantine isolates the broken record.
                    cut = len(self._pending)
            window = bytes(self._pending[:cut])
            del self._pending[:cut]
            if self._eof and not self._pending:
                window = window.rstrip(b"\r\n")  # blank lines at the end are not records
            if window.strip(b"\r\n"):
                yield window if window.endswith(b"\n") else window + b"\n"
