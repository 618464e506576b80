"""CSV as a stream of record-aligned byte windows.

Python never parses the rows here: it finds the header, then cuts the byte stream into
windows that end on a record boundary (a newline outside quotes, found by counting quote
characters, which stays correct for doubled quotes) and hands them to COPY as they are.
`ByteWindows` is the cutting machinery without the header; JSON Lines uses it too, since
for cutting purposes a JSON Lines file is CSV whose quote character never appears.
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
from pgstage.pipeline.extract._closing import Closing
from pgstage.pipeline.extract.compression import READ_ERRORS, is_plain, open_decompressed
from pgstage.spec import SourceSection, pg_encoding

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
    if quote not in buf:   # a fast byte search; most exports quote nothing, and counting is 25x dearer
        pos = buf.find(b"\n") if first else buf.rfind(b"\n")
        return pos + 1 if pos >= 0 else -1
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


@dataclass(frozen=True)
class Window:
    """Record-aligned bytes and where they start in the (decompressed) stream."""

    offset: int
    end: int          # stream offset just past the window's last byte in the file
    data: bytes


def _nth_newline(buf: bytes | bytearray, n: int) -> int:
    """Offset just past the n-th newline, or -1. Only used to cap a window at a batch's size."""
    pos = -1
    for _ in range(n):
        pos = buf.find(b"\n", pos + 1)
        if pos < 0:
            return -1
    return pos + 1


def _last_window(window: bytes) -> bytes:
    """The file's last window without its trailing blank lines (not records), ending in the file's line break.

    COPY takes the line-ending style from the first line it reads: a CRLF file whose last
    line ended in a bare LF would be refused, and its window sent through the slow quarantine.
    """
    body = window.rstrip(b"\r\n")
    if not body:
        return b""
    first = window.find(b"\n")
    return body + (b"\r\n" if first > 0 and window[first - 1:first] == b"\r" else b"\n")


def _only_line_breaks(window: bytes) -> bool:
    """Whether a window holds no byte but CR and LF: asked of every window, so a window that starts
    with anything else is answered without stripping (copying) its 4 MB."""
    return not window or (window[0] in b"\r\n" and not window.strip(b"\r\n"))


class ByteWindows(Closing):
    """A file's decompressed bytes, cut into windows that end on a record boundary.

    Offsets count decompressed bytes, so a checkpoint means the same thing for a plain and a
    compressed file: a plain file seeks there on resume, a compressed one reads up to it.
    """

    def __init__(self, path: Path, quote: bytes, *, member: str | None = None) -> None:
        self.path = path
        self.member = member
        self.quote = quote
        self._stream: BinaryIO = open_decompressed(path, member)
        self._pending = bytearray()
        self._offset = 0            # stream offset of _pending[0]
        self._eof = False

    @property
    def name(self) -> str:
        return f"{self.path}!{self.member}" if self.member is not None else str(self.path)

    def plain_size(self) -> int | None:
        """The stream's length in bytes when the file is not compressed (else unknown)."""
        return self.path.stat().st_size if self.member is None and is_plain(self._stream) else None

    def close(self) -> None:
        self._stream.close()

    def _skip_to(self, offset: int) -> None:
        """Move to a recorded checkpoint (always a record boundary) past what is buffered."""
        buffered_end = self._offset + len(self._pending)
        if offset <= buffered_end:
            del self._pending[:offset - self._offset]
        else:
            self._pending.clear()
            if is_plain(self._stream):
                self._stream.seek(offset)
            else:
                remaining = offset - buffered_end   # the stream stands just past the buffer
                while remaining > 0:
                    chunk = self._read(min(remaining, WINDOW_BYTES))
                    if not chunk:
                        raise SourceError(f"{self.name} is shorter than the checkpoint at byte {offset}",
                                          location=Location(file=self.name),
                                          hint="the file changed since the interrupted run; load it with --force")
                    remaining -= len(chunk)
            self._eof = False
        self._offset = offset

    def _read(self, size: int) -> bytes:
        try:
            return self._stream.read(size)
        except READ_ERRORS as exc:
            raise SourceError(f"cannot read past byte {self._offset + len(self._pending)}: {exc}"
                              " (the file looks truncated or corrupt)",
                              location=Location(file=self.name),
                              hint="fetch the file again") from None

    def _fill(self, minimum: int) -> None:
        while not self._eof and len(self._pending) < minimum:
            chunk = self._read(WINDOW_BYTES)
            if not chunk:
                self._eof = True
            self._pending += chunk

    def _take(self, n: int) -> bytes:
        with memoryview(self._pending) as view:   # one copy of the window, not a slice and then a copy
            data = bytes(view[:n])
        del self._pending[:n]
        self._offset += n
        return data

    def _cut(self, buf: bytes | bytearray) -> int:
        """Offset just past the last record boundary in buf, or -1."""
        return record_cut(buf, self.quote)

    def _no_boundary(self) -> int:
        """Where to cut when MAX_WINDOW_BYTES (or the end of the file) hold no record boundary."""
        # An unterminated quote runs to here. Hand it all over; COPY fails on it and the
        # quarantine isolates the broken record.
        return len(self._pending)

    def windows(self, max_lines: int | None = None) -> Iterator[Window]:
        """Record-aligned windows of about WINDOW_BYTES (and at most max_lines lines), in order."""
        while (window := self.next_window(max_lines)) is not None:
            yield window

    def next_window(self, max_lines: int | None = None) -> Window | None:
        """The next record-aligned window, or None at the end of the file."""
        while True:
            self._fill(WINDOW_BYTES)
            if not self._pending:
                return None
            cut = -1
            if max_lines is not None and self._pending.count(b"\n") > max_lines:
                capped = _nth_newline(self._pending, max_lines)
                cut = self._cut(self._pending[:capped])
            if cut < 0:
                cut = self._cut(self._pending)
            while cut < 0 and not self._eof and len(self._pending) < MAX_WINDOW_BYTES:
                self._fill(len(self._pending) + WINDOW_BYTES)
                cut = self._cut(self._pending)
            if cut < 0:
                cut = self._no_boundary()
            offset = self._offset
            window = self._take(cut)
            if self._eof and not self._pending:
                window = _last_window(window)
            if not _only_line_breaks(window):
                return Window(offset, self._offset, window if window.endswith(b"\n") else window + b"\n")


class CsvReader(ByteWindows):
    """Reads one CSV file (or zip member): its header once, then record-aligned windows of raw bytes.

    `start` resumes at a byte offset recorded in the ledger (always a record boundary).
    """

    def __init__(self, path: Path, options: SourceSection, *, start: int | None = None,
                 member: str | None = None) -> None:
        super().__init__(path, options.quote.encode("ascii"), member=member)
        self.options = options
        self.header = self._read_header()
        self.data_start = self._offset
        if start is not None and start > self._offset:
            self._skip_to(start)

    def _read_header(self) -> Header:
        self._fill(WINDOW_BYTES)
        if self._pending.startswith(BOM) and pg_encoding(self.options.encoding) == "UTF8":
            self._take(len(BOM))
        if not self._pending.strip():
            raise SourceError("the file is empty: no header and no records",
                              location=Location(file=self.name),
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
                                 location=Location(file=self.name, line=1),
                                 hint="set source.encoding to the file's encoding (latin-1, cp1252, ...)") from None
        rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=self.options.delimiter,
                               quotechar=self.options.quote))
        # PostgreSQL text cannot hold NUL: such a name is kept visibly escaped (it can't be a `from` anyway).
        fields = tuple(f.replace("\x00", "\\x00") for f in rows[0]) if rows else ()
        if not self.options.header:
            return Header(tuple(str(i + 1) for i in range(len(fields))))
        self._take(len(first))
        return Header(fields)
