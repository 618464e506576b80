"""`pgstage init`: draft a pipeline spec from a sample file, with every type decided by PostgreSQL.

The sample goes through the reader and COPY a run stages files with, into a TEMP table of text
columns, and aggregate queries ask `pg_input_is_valid` which types every non-empty value fits
(`_init_types.py`). Guessing in Python would disagree with the load on the edge cases that
matter (what PostgreSQL reads as a date, a number, an offset), so a draft loads its own sample
without a reject.

The draft must also not lose data on the next file: null markers (`NA`) are written as
`source.null` instead of keeping a number column text; integers are `bigint`, decimals
`numeric` unless the column is plainly money; `required` only where a large sample says so;
and the key is a combination of identifiers, dates and categories that is unique in the
sample, never a measure, or no key at all (`_init_keys.py`).
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ValidationError

from pgstage import _init_keys as keys
from pgstage import _init_types as types
from pgstage._init_types import SAMPLE, raw
from pgstage.db import connect, execute, qualified, resolve_url, wrap
from pgstage.errors import HeaderMismatch, SourceError, UsageError
from pgstage.pipeline import stage
from pgstage.pipeline._quarantine import isolate
from pgstage.pipeline.extract import CsvReader
from pgstage.spec import SourceSection, parse_spec

DELIMITERS = (",", ";", "\t", "|")
_SEQUENCE = "pgstage_init_sample_rec"
_TRANSLITERATE = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "Ae", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "Oe",
                                "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th"})
KEYLESS_STRATEGY = "append"


@dataclass(frozen=True)
class ColumnDraft:
    """What the sample says about one source field, and the column drafted for it."""

    header: str
    name: str
    type: str
    required: bool
    values: int
    empty: int
    examples: tuple[str, ...]
    trim: bool = False
    zero_is_null: bool = False
    notes: tuple[str, ...] = ()
    row_number: bool = False


@dataclass(frozen=True)
class SampleProfile:
    """The sample as PostgreSQL saw it: records read, the columns, the key and why."""

    delimiter: str
    records: int
    more: bool                                   # the file has records beyond the sample
    columns: tuple[ColumnDraft, ...]
    key: tuple[str, ...]                         # () when no key qualifies: the draft appends
    key_notes: tuple[str, ...] = ()              # comment lines above the key
    nulls: tuple[str, ...] = ()                  # markers read as NULL (source.null)
    unreadable: tuple[int, ...] = ()             # record numbers COPY could not read
    left_out: tuple[str, ...] = field(default=())  # header names a spec cannot address (repeated)


def draft_spec(sample: Path, *, db: str | None = None, name: str | None = None, target: str | None = None,
               sample_rows: int = 10_000, delimiter: str | None = None, encoding: str = "utf-8",
               output: Path | None = None) -> str:
    """A commented TOML spec for `sample`, ready to edit; `output` is where it will be written.

    `source.path` is relative to `output`'s directory when given, so the spec and the sample
    can move together; without it the path is written as given.
    """
    sample = Path(sample)
    profile = profile_sample(sample, db=db, sample_rows=sample_rows, delimiter=delimiter, encoding=encoding)
    stem = _stem(sample)
    pipeline_name = name or snake_case(stem) or "pipeline"
    table = target or f"public.{snake_case(stem) or 'data'}"
    source_path = sample.as_posix()
    if output is not None:
        source_path = Path(os.path.relpath(sample.resolve(), Path(output).resolve().parent)).as_posix()
    text = render_spec(profile, sample=sample, name=pipeline_name, target=table, source_path=source_path,
                       encoding=encoding)
    _check(text, output)
    return text


def _check(text: str, output: Path | None) -> None:
    """A draft that would not load is a bug here, or a bad --name/--target."""
    parse_spec(text, output)


def profile_sample(sample: Path, *, db: str | None = None, sample_rows: int = 10_000, delimiter: str | None = None,
                   encoding: str = "utf-8") -> SampleProfile:
    """Read up to `sample_rows` records into PostgreSQL and decide each column's type, flags and keys."""
    if sample_rows < 1:
        raise UsageError(f"--sample-rows must be at least 1, got {sample_rows}")
    if not sample.is_file():
        what = "is a directory" if sample.is_dir() else "does not exist"
        raise UsageError(f"{sample} {what}", hint="give the path of a CSV file to draft a spec from")
    chosen = delimiter if delimiter is not None else sniff_delimiter(sample, encoding)
    options = _options(sample, chosen, encoding)
    with _reader(sample, options) as reader:
        fields = reader.header.fields
        with connect(resolve_url(db)) as conn:
            _create_sample_table(conn, len(fields))
            unreadable, overshot = _copy_sample(conn, reader, options, len(fields), sample_rows)
            more = overshot or reader.next_window(max_lines=1) is not None
            return _profile(conn, fields, chosen, more, tuple(unreadable))


def sniff_delimiter(sample: Path, encoding: str = "utf-8") -> str:
    """The delimiter among `, ; TAB |` that splits the header into the most fields, the first data line alike."""
    best: tuple[int, int, str] | None = None     # (consistent, fields, delimiter)
    for rank, candidate in enumerate(DELIMITERS):
        with _reader(sample, _options(sample, candidate, encoding)) as reader:
            n_header = len(reader.header.fields)
            window = reader.next_window(max_lines=1)
        n_data = n_header
        if window is not None:
            text = window.data.decode(encoding, "replace")
            first = next(csv.reader(io.StringIO(text, newline=""), delimiter=candidate, quotechar='"'), [])
            n_data = len(first)
        score = (int(n_data == n_header), n_header, -rank)
        if best is None or score > (best[0], best[1], -DELIMITERS.index(best[2])):
            best = (score[0], n_header, candidate)
    assert best is not None
    return best[2] if best[1] > 1 else ","


def snake_case(text: str) -> str:
    """An ASCII `[a-z0-9_]` name for a header: `Created at` → created_at, `orderID` → order_id, `Straße` → strasse."""
    text = unicodedata.normalize("NFKD", text.translate(_TRANSLITERATE))
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return f"col_{name}" if name[:1].isdigit() else name


def column_names(headers: tuple[str, ...]) -> list[str]:
    """snake_case names, unique, at most 63 characters; `column_N` where nothing ASCII is left."""
    names: list[str] = []
    taken: set[str] = set()
    for position, header in enumerate(headers, 1):
        base = (snake_case(header) or f"column_{position}")[:63]
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base[:63 - len(str(n)) - 1]}_{n}"
        taken.add(name)
        names.append(name)
    return names


def toml_string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped; other text kept as is."""
    out = ['"']
    for char in value:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[char])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


# --- reading the sample into PostgreSQL ------------------------------------------------------


def _options(sample: Path, delimiter: str, encoding: str) -> SourceSection:
    try:
        return SourceSection(path=str(sample), delimiter=delimiter, encoding=encoding)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise UsageError(f"--delimiter {delimiter!r} / --encoding {encoding!r}: {problems}",
                         hint="the delimiter is one character; the encoding a name like utf-8, latin-1, cp1252") from None


def _reader(sample: Path, options: SourceSection) -> CsvReader:
    try:
        return CsvReader(sample, options)
    except HeaderMismatch as exc:
        raise UsageError(f"{sample}: {exc.message}", hint="pass --encoding with the file's encoding (latin-1, cp1252, ...)") from None
    except SourceError as exc:
        raise UsageError(f"{sample}: {exc.message}",
                         hint="pgstage init needs a header line and some records to draft a spec from") from None


def _create_sample_table(conn: psycopg.Connection[Any], n_fields: int) -> None:
    """A TEMP table shaped like a staging table (text f1..fN, `_rec` from its own sequence), so stage's COPY fits it."""
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(raw(i)) for i in range(n_fields))
    execute(conn, sql.SQL("CREATE TEMP SEQUENCE {}").format(sql.Identifier(_SEQUENCE)), label="init: sample sequence")
    execute(conn, sql.SQL("CREATE TEMP TABLE {} (_rec bigint NOT NULL DEFAULT nextval({}), {})").format(
        SAMPLE, sql.Literal(qualified("pg_temp", _SEQUENCE)), columns), label="init: sample table")


def _copy_sample(conn: psycopg.Connection[Any], reader: CsvReader, options: SourceSection, n_fields: int,
                 limit: int) -> tuple[list[int], bool]:
    """COPY up to `limit` records as a run stages them; returns the numbers of records COPY could not read,
    and whether a window ran past the limit (a quoted line break near it can make one longer than asked)."""
    record, unreadable = 1, []
    dialect = stage.CsvDialect(options.delimiter, options.quote, options.encoding)
    plain = stage.csv_copy(SAMPLE, n_fields, dialect, numbered=False)
    with_numbers = stage.csv_copy(SAMPLE, n_fields, dialect, numbered=True)
    while record <= limit:
        window = reader.next_window(max_lines=limit - record + 1)  # lines >= records: never past the limit
        if window is None:
            break
        stage.number_from(conn, qualified("pg_temp", _SEQUENCE), record)
        try:
            record += stage.copy_data(conn, plain, window.data)
            continue
        except stage.UNREADABLE:
            pass
        except psycopg.Error as exc:
            raise wrap(exc, f"init: copy {reader.path}") from exc
        found = isolate(window.data, first_record=record, n_fields=n_fields, encoding=options.encoding,
                        delimiter=options.delimiter, quote=options.quote)
        refused = stage.copy_records(conn, with_numbers, found.good, dialect)
        unreadable += [q.record for q in (*found.bad, *refused)]
        record += len(found.good) + len(found.bad)
    execute(conn, sql.SQL("DELETE FROM {} WHERE _rec > %s").format(SAMPLE), (limit,), label="init: cap")
    return sorted(n for n in unreadable if n <= limit), record - 1 > limit


# --- deciding types, null markers and the key ------------------------------------------------

# `required` for a column that is not part of the key only when a sample this large never leaves it
# empty: a small sample without an empty value says little about next month's file.
REQUIRED_FROM = 1_000


def _profile(conn: psycopg.Connection[Any], fields: tuple[str, ...], delimiter: str, more: bool,
             unreadable: tuple[int, ...]) -> SampleProfile:
    n = len(fields)
    names = column_names(fields)
    repeated = {f for f in fields if fields.count(f) > 1}
    kept = [i for i in range(n) if fields[i] not in repeated]
    # Types with every marker found read as NULL; keep the markers that stood in for a typed value.
    found = types.markers_found(conn, n)
    nulls = tuple(m for m in types.MARKERS if any(m in found.get(i, {}) for i in kept))
    records, facts = types.column_facts(conn, n, nulls)
    kinds = {i: types.decide(names[i], fields[i], facts[i]) for i in kept}
    markers = types.adopted({i: found[i] for i in kept if i in found}, kinds)
    if markers != nulls:
        nulls = markers
        records, facts = types.column_facts(conn, n, nulls)
        kinds = {i: types.decide(names[i], fields[i], facts[i]) for i in kept}
    drafts: dict[int, ColumnDraft] = {}
    for i in kept:
        f, kind = facts[i], kinds[i]
        zero = f.zero and kind in types.DATE_TYPES
        empty = f.empty_after_zero if zero else records - f.values
        notes: list[str] = []
        as_null = {m: c for m, c in found.get(i, {}).items() if m in nulls}
        if as_null:
            notes.append(", ".join(f"{c:,} {toml_string(m)}" for m, c in as_null.items()) + " read as NULL (source.null)")
        if f.values == 0:
            notes.append("every sampled value is empty: text until the data says otherwise")
        if f.trim:
            notes.append("values carry leading or trailing spaces: trimmed")
        if zero:
            notes.append("0000-00-00 stands for 'no date': read as NULL")
        if kind == "text" and f.values:
            miss = types.near_miss(conn, i, names[i], fields[i], f, nulls)
            if miss is not None:
                shown, failing, bad = miss
                notes.append(f"{failing:,} of {f.values:,} values are not valid {shown} (e.g. {_example_text(bad)});"
                             f" they keep this column text: with type = \"{shown}\" they would be rejected")
        notes += _type_note(kind, f)
        if kind in types.DATE_TYPES and (style := types.date_style_note(conn, i, nulls)):
            notes.append(style)
        row_number = kind in ("integer", "bigint") and empty == 0 and types.sequence_from_one(conn, i, nulls)
        drafts[i] = ColumnDraft(fields[i], names[i], kind, required=False, values=records - empty, empty=empty,
                                examples=types.examples(conn, i, nulls), trim=f.trim, zero_is_null=zero,
                                notes=tuple(notes), row_number=row_number)
    choice = keys.choose_key(conn, [keys.Column(i, d.name, d.type, d.empty == 0 and d.values > 0, d.row_number)
                                    for i, d in drafts.items()], records, nulls)
    columns = []
    for d in drafts.values():
        required = d.name in choice.key or (records >= REQUIRED_FROM and d.empty == 0 and d.values > 0)
        columns.append(replace(d, required=required))
    return SampleProfile(delimiter, records, more, tuple(columns), choice.key, choice.why, nulls, unreadable,
                         tuple(dict.fromkeys(f for f in fields if f in repeated)))


def _type_note(kind: str, facts: types.Facts) -> list[str]:
    """Why a type is wider or plainer than the values alone would make it."""
    if kind == "bigint" and facts.failures["integer"] == 0:
        return ["bigint: integers that fit a smaller type now may not next year"]
    if kind == "integer":
        return ["integer: the name says a small code or a calendar part"]
    if kind == "numeric" and facts.failures["money_cents"] == 0 and facts.money_shape:
        return ["numeric, not money_cents: nothing in the name or header says money (amount, total, cost, a currency)"]
    return []


# --- writing the draft -----------------------------------------------------------------------


def _stem(sample: Path) -> str:
    name = sample.name
    while True:
        base, dot, ext = name.rpartition(".")
        if not dot or not base or ext.lower() not in ("csv", "tsv", "txt", "gz", "psv"):
            return name
        name = base


def _example_text(examples: tuple[str, ...]) -> str:
    shown = [toml_string(e if len(e) <= 40 else e[:37] + "...") for e in examples]
    return ", ".join(shown)


def render_spec(profile: SampleProfile, *, sample: Path, name: str, target: str, source_path: str,
                encoding: str = "utf-8") -> str:
    """The TOML text: a comment above every column says what the sample held."""
    columns = profile.columns
    if not columns:
        raise UsageError(f"{sample}: no field can be addressed by name (every header name is repeated)",
                         hint="give the fields distinct names in the header")
    scope = f"the first {profile.records:,} records" if profile.more else f"all {profile.records:,} records"
    lines = [
        f"# Drafted by `pgstage init` from {sample.name} ({scope}): each type is one every sampled value",
        "# fits, as PostgreSQL's pg_input_is_valid judged it, wide enough for the next file (bigint, numeric).",
        f"# required = true marks the key, and columns that none of {REQUIRED_FROM:,} or more sampled records leaves",
        "# empty. Review the types and the key, and add rules (min, max, regex, in, checks) before loading for",
        "# real: see docs/init.md.",
    ]
    if profile.unreadable:
        numbers = ", ".join(str(n) for n in profile.unreadable[:10]) + (" ..." if len(profile.unreadable) > 10 else "")
        lines.append(f"# {len(profile.unreadable)} record(s) could not be read at all (records {numbers}):"
                     " they will be rejected as `parse`.")
    lines += ["", "[pipeline]", f"name = {toml_string(name)}", f"target = {toml_string(target)}", *profile.key_notes]
    if profile.key:
        lines += [f"key = [{', '.join(toml_string(k) for k in profile.key)}]", 'strategy = "upsert"']
    else:
        lines.append(f"strategy = {toml_string(KEYLESS_STRATEGY)}")
    lines += ["", "[source]", f"path = {toml_string(source_path)}", f"delimiter = {toml_string(profile.delimiter)}"]
    if profile.nulls:
        lines += ["# read as NULL: these stand for a missing value in columns of numbers or dates"
                  " (and so in every column)",
                  f"null = [{', '.join(toml_string(m) for m in profile.nulls)}]"]
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        lines.append(f"encoding = {toml_string(encoding)}")
    lines += ["", "[columns]"]
    for repeated in profile.left_out:
        lines.append(f"# {toml_string(repeated)} appears more than once in the header: pgstage reads fields by"
                     " name, so it is left out")
    for c in columns:
        summary = f"# {toml_string(c.header)}: {c.values:,} values, {c.empty:,} empty"
        if c.examples:
            summary += f"; e.g. {_example_text(c.examples)}"
        lines.append(summary)
        lines += [f"#   {note}" for note in c.notes]
        entry = [f"from = {toml_string(c.header)}", f"type = {toml_string(c.type)}"]
        if c.required:
            entry.append("required = true")
        if c.trim:
            entry.append('normalize = ["trim"]')
        if c.zero_is_null:
            entry.append("zero_is_null = true")
        lines.append(f"{c.name} = {{ {', '.join(entry)} }}")
    lines += ["", "[load]", "max_reject_ratio = 0.0", ""]
    return "\n".join(lines)


__all__ = ["ColumnDraft", "SampleProfile", "column_names", "draft_spec", "profile_sample", "render_spec",
           "sniff_delimiter", "snake_case", "toml_string"]
