"""Isolate the records of a window that COPY refused, so the rest of the window still loads.

This is the only place Python looks at rows, and only in windows where COPY failed: it
splits the window into records with the csv module (C code), keeps the well-formed ones
(re-written with their record numbers) and quarantines the others with a reason.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass

_SURROGATE = re.compile("[\udc80-\udcff]")


@dataclass(frozen=True)
class Quarantined:
    """A record COPY cannot accept: its number in the file, its raw text and why."""

    record: int
    raw: str
    reason: str


@dataclass(frozen=True)
class Isolated:
    good_rows: list[list[str]]   # [record_no, field1, ...] for each well-formed record
    bad: list[Quarantined]


def _printable(raw: str) -> str:
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
    reader = csv.reader(iter(lines), delimiter=delimiter, quotechar=quote, strict=False)
    good_rows: list[list[str]] = []
    bad: list[Quarantined] = []
    record = first_record
    consumed = 0
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # field larger than the csv module allows
            raw = "".join(lines[consumed:reader.line_num])
            consumed = reader.line_num
            bad.append(Quarantined(record, _printable(raw), f"unparseable record: {exc}"))
            record += 1
            continue
        raw = "".join(lines[consumed:reader.line_num])
        consumed = reader.line_num
        if not fields:
            continue  # a blank line is not a record
        reason = _problem(raw, fields, n_fields, encoding, quote)
        if reason:
            bad.append(Quarantined(record, _printable(raw), reason))
        else:
            good_rows.append([str(record), *fields])
        record += 1
    return Isolated(good_rows, bad)


def to_csv(rows: list[list[str]]) -> bytes:
    """Rows back to CSV (UTF-8) for COPY. Every field is quoted: QUOTE_MINIMAL would leave a lone
    carriage return unquoted, which COPY then reads as the end of the line."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)
    return out.getvalue().encode("utf-8")


def _problem(raw: str, fields: list[str], n_fields: int, encoding: str, quote: str) -> str | None:
    """Why COPY would refuse this record, in words a user can act on; None when it is fine."""
    if raw.count(quote) % 2:
        return "unterminated quoted field: a quote opens a value that never closes"
    bad_byte = _SURROGATE.search(raw)
    if bad_byte:
        byte = ord(bad_byte.group()) - 0xDC00
        return f"invalid byte 0x{byte:02x} for encoding {encoding} at character {bad_byte.start() + 1}"
    if "\x00" in raw:
        return "contains a NUL byte, which PostgreSQL text cannot hold"
    if len(fields) != n_fields:
        return f"expected {n_fields} fields, found {len(fields)}"
    return None
