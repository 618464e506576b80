"""JSON Lines as a stream of line-aligned byte windows; PostgreSQL parses the JSON.

JSON text cannot hold a raw newline (inside strings it must be escaped as \\n), so every
newline ends a record and a window is cut at the last newline it holds. Python never looks
inside a line here; the lines go to COPY as they are (see stage.py).
"""

from __future__ import annotations

from pathlib import Path

from pgstage.errors import Location, SourceError
from pgstage.pipeline.extract.csv import BOM, MAX_WINDOW_BYTES, WINDOW_BYTES, ByteWindows

# Bytes that never occur unescaped in valid JSON text (control characters must be escaped
# inside strings and are not whitespace outside them): COPY's CSV quote and delimiter, so
# that COPY hands each line to PostgreSQL's JSON parser whole.
COPY_QUOTE = "\x01"
COPY_DELIMITER = "\x02"


class JsonlReader(ByteWindows):
    """Reads one JSON Lines file (or zip member) as windows of whole lines.

    The stream offset of a window is a line boundary, so checkpoints and resume work as for
    CSV. A UTF-8 byte order mark at the start is skipped.
    """

    def __init__(self, path: Path, *, start: int | None = None, member: str | None = None) -> None:
        super().__init__(path, COPY_QUOTE.encode("ascii"), member=member)
        self._fill(WINDOW_BYTES)
        if self._pending.startswith(BOM):
            self._take(len(BOM))
        self.data_start = self._offset
        if start is not None and start > self._offset:
            self._skip_to(start)

    def _cut(self, buf: bytes | bytearray) -> int:
        # Every newline ends a line, even in broken JSON: quotes are not counted.
        return buf.rfind(b"\n") + 1 or -1

    def _no_boundary(self) -> int:
        if self._eof:
            return len(self._pending)   # the last line, without a final newline
        raise SourceError(f"a line starting at byte {self._offset} is longer than {MAX_WINDOW_BYTES >> 20} MiB",
                          location=Location(file=self.name),
                          hint="is this really JSON Lines (one object per line)? A pretty-printed JSON document"
                               " is not; convert it with `jq -c '.[]'`")
