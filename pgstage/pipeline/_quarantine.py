"""Isolate the records of a window that COPY refused, so the rest of the window still loads.

This is the only place Python looks at rows, and only in windows where COPY failed. The
csv module (C code) finds the record boundaries and counts fields; records it finds broken
are quarantined with a reason. The others are sent to COPY again as their ORIGINAL bytes,
each prefixed with its record number, so PostgreSQL's parser alone decides every value —
a value never depends on whether a neighbour was broken. JSON Lines windows are sorted
set-based in SQL (stage.py); only lines no text column can hold are split out here.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass

_SURROGATE = re.compile("[\udc80-\udcff]")
csv.field_size_limit(1 << 30)  # PostgreSQL's own limit for a field; the default 128 KiB is far too low


@dataclass(frozen=True)
class Quarantined:
    """A record COPY cannot accept: its number in the file, its raw text and why."""

    record: int
    raw: str
    reason: str


@dataclass(frozen=True)
class Isolated:
    good: list[tuple[int, str]]   # (record number, the record's original text, line break included)
    bad: list[Quarantined]


def printable(raw: str) -> str:
    """Raw text safe for JSONB: undecodable bytes as \\xNN, NUL as \\x00."""
    text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\x00", "\\x00").rstrip("\r\n")


def isolate(window: bytes, *, first_record: int, n_fields: int, encoding: str, delimiter: str,
            quote: str) -> Isolated:
    """Split a refused window into loadable records and quarantined ones."""
    text = window.decode(encoding, "surrogateescape")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    lines = [line + "\n" for line in lines]
    good: list[tuple[int, str]] = []
    bad: list[Quarantined] = []
    record = first_record
    for span in _copy_spans(lines, quote):
        # The csv module reads each span on its own, so it cannot read a quoted value on past
        # the line end where COPY ends the record (a quote inside an unquoted value would open
        # one for it, and the next good record would become part of a quarantined one).
        reader = csv.reader(iter(span), delimiter=delimiter, quotechar=quote, strict=False)
        consumed = 0
        while True:
            error: csv.Error | None = None
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                fields, error = [], exc
            raw = "".join(span[consumed:reader.line_num])
            consumed = reader.line_num
            if error is None and not fields:
                continue  # a blank line is not a record
            reason = _csv_error(str(error)) if error is not None else _problem(raw, fields, n_fields, encoding, quote)
            if reason:
                bad.append(Quarantined(record, printable(raw), reason))
            else:
                good.append((record, raw))
            record += 1
    return Isolated(good, bad)


def _copy_spans(lines: list[str], quote: str) -> Iterator[list[str]]:
    """The window's lines in runs that each end where COPY ends a record.

    COPY reads a quote anywhere in a value as opening or closing a quoted part, so a record
    ends at a line end with an even number of quotes before it (the rule the windows are cut
    by). Runs of quote-free lines stay together: the csv module cannot open a quoted value
    in them. Within a run, the csv module may still end a record sooner (a stray quote's
    line is judged alone).
    """
    start, count = 0, 0
    for i, line in enumerate(lines):
        quotes = line.count(quote)
        if quotes and count == 0 and i > start:
            yield lines[start:i]            # the quote-free lines before this one
            start = i
        count += quotes
        if quotes and count % 2 == 0:
            yield lines[start:i + 1]
            start, count = i + 1, 0
    if start < len(lines):
        yield lines[start:]


def numbered(records: list[tuple[int, str]], *, delimiter: str, encoding: str) -> bytes:
    """Records as COPY input with their number as a first field, in the source's own encoding."""
    return "".join(f"{number}{delimiter}{raw}" for number, raw in records).encode(encoding, "surrogateescape")


def _csv_error(message: str) -> str:
    if "new-line character seen in unquoted field" in message:
        return "a carriage return inside an unquoted value: quote the value or fix the file's line endings"
    return f"unparseable record: {message}"


def _problem(raw: str, fields: list[str], n_fields: int, encoding: str, quote: str) -> str | None:
    """Why COPY would refuse this record, in words a user can act on; None when it is fine."""
    if raw.count(quote) % 2:
        return ("odd number of quote characters: a quoted value never closes, or a quote stands inside an"
                " unquoted value (double it, or quote the whole value)")
    bad_byte = _SURROGATE.search(raw)
    if bad_byte:
        byte = ord(bad_byte.group()) - 0xDC00
        return f"invalid byte 0x{byte:02x} for encoding {encoding} at character {bad_byte.start() + 1}"
    if "\x00" in raw:
        return "contains a NUL byte, which PostgreSQL text cannot hold"
    if len(fields) != n_fields:
        return f"expected {n_fields} fields, found {len(fields)}"
    return None


def json_lines(window: bytes, *, first_record: int) -> tuple[list[tuple[int, str]], list[Quarantined]]:
    """The lines of a JSON Lines window that COPY could not even take as text, split by Python.

    Returns (line number, text) for PostgreSQL's JSON parser to judge, and the lines no text
    column can hold (bad UTF-8, NUL) quarantined. Blank lines keep their number, but are not
    records. Only windows COPY refused come here.
    """
    texts: list[tuple[int, str]] = []
    bad: list[Quarantined] = []
    lines = window.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, line in enumerate(lines, first_record):
        line = line.removesuffix(b"\r")
        if not line.strip(b" \t\r"):
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raw = printable(line.decode("utf-8", "surrogateescape"))
            bad.append(Quarantined(number, raw, f"invalid byte 0x{line[exc.start]:02x} for encoding UTF8 at byte"
                                                f" {exc.start + 1} (JSON Lines are UTF-8)"))
            continue
        if "\x00" in text:
            bad.append(Quarantined(number, printable(text), "contains a NUL byte, which PostgreSQL text cannot hold"))
            continue
        texts.append((number, text))
    return texts, bad
