"""Screen a refused CSV window in C-speed passes, so that a few broken records cost little.

A ragged row every few thousand makes COPY refuse nearly every 4 MB window of a file. Parsing
each refused window with the csv module costs microseconds a record, for every record; this
screen finds the *suspects* (records that are not plainly well-formed) with byte operations
and one regular expression, and leaves the well-formed records, which are nearly all of them,
to COPY untouched:

- quote-free windows (most exports): a record is a line; `bytes.translate` keeps only
  delimiters and line breaks, and a line is well-formed iff what is left of it is exactly
  `n_fields - 1` delimiters (a regular expression finds the lines that are not);
- windows with quotes: a possessive regular expression of a strict CSV record (quoted fields
  with doubled quotes and embedded newlines, unquoted fields without quote, CR or NUL) skips
  every run of well-formed records.

Each suspect is judged by the csv-module path of `_quarantine.isolate`, alone. One it reads
fine stays in the bytes sent to COPY; a broken one is quarantined and replaced by a
placeholder record of empty fields, so that the staging sequence numbers every record as in
the file; the validation pass leaves the placeholders out by number. Blank lines are
dropped, as they are not records. The grammar only accepts what COPY accepts; should COPY
still refuse the screened window (a suspect the csv module accepted, say), the caller falls
back to isolating the whole window.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from functools import lru_cache

from pgstage.pipeline._quarantine import Quarantined, isolate

# Encodings in which a byte below 0x80 is always that ASCII character (never part of a
# multibyte character), so delimiters, quotes and newlines can be found in the raw bytes.
_ASCII_SAFE = ("utf-8", "ascii", "latin-1", "iso8859", "cp125", "mac-roman")


@dataclass
class Screened:
    """A refused window, made loadable: what to COPY and what to do with its suspects."""

    payload: list[bytes | memoryview]                # the window in pieces, suspects replaced by placeholders
    records: int                                     # records the window holds
    placeholders: list[int] = field(default_factory=list)    # numbers of placeholder rows, to leave out
    bad: list[Quarantined] = field(default_factory=list)


def _ascii_safe(encoding: str) -> bool:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return False
    return name.startswith(_ASCII_SAFE)


@lru_cache(maxsize=16)
def _delete_all_but(keep: bytes) -> bytes:
    return bytes(b for b in range(256) if b not in keep)


@lru_cache(maxsize=16)
def _strict(n_fields: int, delimiter: bytes, quote: bytes, eol: bytes) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """(a run of well-formed records, one well-formed record) for this dialect."""
    d, q = re.escape(delimiter), re.escape(quote)
    unquoted = b"[^" + d + q + rb"\r\n\x00]*+"
    quoted = q + b"(?:[^" + q + rb"\x00]|" + q + q + b")*+" + q
    one = b"(?:" + quoted + b"|" + unquoted + b")"
    record = one + b"(?:" + d + one + b"){" + str(n_fields - 1).encode() + b"}" + re.escape(eol)
    return re.compile(b"(?:" + record + b")*+"), re.compile(record)


@lru_cache(maxsize=16)
def _odd_shape(expected: bytes) -> re.Pattern[bytes]:
    """A line of the translated window that is not exactly `expected` (its delimiters and CR)."""
    return re.compile(b"(?m)^(?!" + re.escape(expected) + b"\n)[^\n]*\n")


def _line_starts(window: bytes, lines: list[int], mean: int) -> list[int]:
    """The byte offsets at which the given (ascending) line numbers of the window start.

    Without splitting the window into its tens of thousands of lines: from the previous line
    found, jump ahead by the mean line length to a little short of the line wanted, count the
    newlines skipped, again until a few lines are left, and step over those.
    """
    offsets, pos, line = [], 0, 0              # `pos` is where line number `line` starts
    for wanted in lines:
        while wanted - line > 32:
            ahead = wanted - line
            jump = window.rfind(b"\n", pos, pos + (ahead - 8 - ahead // 8) * mean)
            skipped = window.count(b"\n", pos, jump + 1) if jump >= 0 else 0
            if not 0 < skipped <= ahead:
                break
            pos, line = jump + 1, line + skipped
        while line < wanted:
            pos, line = window.index(b"\n", pos) + 1, line + 1
        offsets.append(pos)
    return offsets


def _record_end(window: bytes, start: int, quote: bytes) -> int:
    """Offset just past the newline that ends the record starting at `start` (quote parity)."""
    pos = window.find(b"\n", start)
    while pos >= 0 and window.count(quote, start, pos) % 2:
        pos = window.find(b"\n", pos + 1)
    return len(window) if pos < 0 else pos + 1


class _Builder:
    """Collects the payload and the suspects' fates while the window is walked in order."""

    def __init__(self, first_record: int, placeholder: bytes, n_fields: int, encoding: str,
                 delimiter: str, quote: str) -> None:
        self.number = first_record
        self.placeholder = placeholder
        self.args = {"n_fields": n_fields, "encoding": encoding, "delimiter": delimiter, "quote": quote}
        self.pieces: list[bytes | memoryview] = []
        self.out = Screened([], 0)

    def keep(self, chunk: bytes | memoryview, records: int) -> None:
        self.pieces.append(chunk)
        self.number += records

    def suspect(self, raw: bytes) -> None:
        if not raw.strip(b"\r\n"):
            return  # a blank line is not a record: it takes no number
        judged = isolate(raw, first_record=self.number, **self.args)  # type: ignore[arg-type]
        # A suspect the csv module reads fine goes to COPY as it is (PostgreSQL decides its
        # values, as it would for any record); a broken one leaves a placeholder in its place.
        fates = sorted([*((n, text) for n, text in judged.good), *((q.record, None) for q in judged.bad)],
                       key=lambda fate: fate[0])
        for number, text in fates:
            if text is None:
                self.pieces.append(self.placeholder)
                self.out.placeholders.append(number)
            else:
                self.pieces.append(text.encode(str(self.args["encoding"]), "surrogateescape"))
        self.out.bad.extend(judged.bad)
        self.number += len(fates)

    def done(self, first_record: int) -> Screened:
        # Kept runs are views of the window and go to COPY as they are: joining them into one
        # buffer first cost a third of the screen (a 4 MB copy per window).
        self.out.payload = self.pieces
        self.out.records = self.number - first_record
        return self.out


def applies(n_fields: int, encoding: str, delimiter: str, quote: str) -> bool:
    """Whether this dialect can be screened at all (see `screen`)."""
    return n_fields >= 2 and _ascii_safe(encoding) and len(delimiter.encode()) == 1 and len(quote.encode()) == 1


def screen(window: bytes, *, first_record: int, n_fields: int, encoding: str, delimiter: str,
           quote: str) -> Screened | None:
    """The window's well-formed records as they are, its suspects judged; None when it cannot tell.

    None sends the caller to the whole-window isolation: a one-field file (where an empty
    line is a record), bytes the encoding refuses, an encoding whose multibyte characters may
    hold ASCII bytes, or a window in which nothing looks wrong (COPY refused it for a reason
    this screen does not see).
    """
    if not applies(n_fields, encoding, delimiter, quote):
        return None
    if not window.isascii():   # ASCII is valid in every encoding that `applies` allows
        try:
            window.decode(encoding)
        except UnicodeDecodeError:
            return None
    d, q = delimiter.encode(), quote.encode()
    first_nl = window.find(b"\n")
    crlf = first_nl > 0 and window[first_nl - 1:first_nl] == b"\r"
    eol = b"\r\n" if crlf else b"\n"
    build = _Builder(first_record, d * (n_fields - 1) + eol, n_fields, encoding, delimiter, quote)
    if q not in window:
        shapes = window.translate(None, _delete_all_but(d + b"\r\n\x00"))
        suspects, line, last = [], 0, 0
        for odd in _odd_shape(d * (n_fields - 1) + (b"\r" if crlf else b"")).finditer(shapes):
            line += shapes.count(b"\n", last, odd.start())
            last = odd.start()
            suspects.append(line)
        if not suspects:
            return None
        view, line_count = memoryview(window), line + shapes.count(b"\n", last)   # a window ends with a newline
        start, start_at = 0, 0                      # the next line to keep, and its offset
        for i, at in zip(suspects, _line_starts(window, suspects, max(1, len(window) // line_count))):
            if i > start:
                build.keep(view[start_at:at], i - start)
            start_at = window.index(b"\n", at) + 1
            build.suspect(window[at:start_at])
            start = i + 1
        if start < line_count:
            build.keep(view[start_at:], line_count - start)
        return build.done(first_record)
    runs, record = _strict(n_fields, d, q, eol)
    pos, found = 0, 0
    while pos < len(window):
        end = runs.match(window, pos).end()   # type: ignore[union-attr]  # a possessive *-run always matches
        if end > pos:
            chunk = window[pos:end]
            build.keep(chunk, record.subn(b"", chunk)[1])
        if end >= len(window):
            break
        stop = _record_end(window, end, q)
        build.suspect(window[end:stop])
        found += 1
        pos = stop
    return build.done(first_record) if found else None
