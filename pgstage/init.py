"""`pgstage init`: draft a pipeline spec from a sample file, with every type decided by PostgreSQL.

The sample goes through pgstage's own reader and COPY into a TEMP table of text columns, and
one aggregate query asks `pg_input_is_valid` which types every non-empty value fits. Guessing
in Python would disagree with the load on the edge cases that matter (what PostgreSQL reads
as a date, a number, an offset), so a draft loads its own sample without a reject.

Candidates, narrowest first: boolean, smallint, integer, bigint, money_cents (amount-named
columns of decimal text), numeric, date, timestamp, timestamptz, uuid; else text. Values
PostgreSQL accepts but pgstage rejects by default (`now`, `infinity`, `NaN`) never make a
column a date or a number, and numbers with leading zeros (zip codes, account numbers)
stay text so that no digit is lost.
"""

from __future__ import annotations

import csv
import io
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import ValidationError

from pgstage.db import connect, execute, resolve_url, wrap
from pgstage.errors import HeaderMismatch, SourceError, UsageError
from pgstage.pipeline._quarantine import isolate, numbered
from pgstage.pipeline.extract import CsvReader
from pgstage.pipeline.transform import MONEY, OFFSET, SPECIAL_DATETIME, SPECIAL_NUMBER, ZERO_DATE
from pgstage.spec import SourceSection, parse_spec, pg_encoding

DELIMITERS = (",", ";", "\t", "|")
SAMPLE_TABLE = "pgstage_init_sample"
# Column names that say "this is an amount of money" (money_cents needs a name AND the shape).
_AMOUNT = re.compile(r"^(sub)?(total|amount|price|cost|sum)s?$")
_TRANSLITERATE = str.maketrans({"ß": "ss", "æ": "ae", "Æ": "Ae", "ø": "o", "Ø": "O", "œ": "oe", "Œ": "Oe",
                                "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "þ": "th", "Þ": "Th"})
# What COPY says about a record it cannot read at all.
_UNREADABLE = (psycopg.errors.BadCopyFileFormat, psycopg.errors.CharacterNotInRepertoire,
               psycopg.errors.UntranslatableCharacter)
_DATE_TYPES = ("date", "timestamp", "timestamptz")


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


@dataclass(frozen=True)
class SampleProfile:
    """The sample as PostgreSQL saw it: records read, the columns, the candidate keys."""

    delimiter: str
    records: int
    more: bool                                   # the file has records beyond the sample
    columns: tuple[ColumnDraft, ...]
    candidate_keys: tuple[str, ...]
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
    parse_spec(text, output)  # a draft that would not load is a bug here, or a bad --name/--target
    return text


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
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"c{i + 1}")) for i in range(n_fields))
    execute(conn, sql.SQL("CREATE TEMP TABLE {} (_rec bigint GENERATED BY DEFAULT AS IDENTITY, {})").format(
        sql.Identifier(SAMPLE_TABLE), columns), label="init: sample table")


def _copy_statement(options: SourceSection, n_fields: int, *, numbered_records: bool) -> sql.Composed:
    names = [sql.Identifier(f"c{i + 1}") for i in range(n_fields)]
    if numbered_records:
        names.insert(0, sql.Identifier("_rec"))
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, DELIMITER {}, QUOTE {}, ENCODING {})").format(
        sql.Identifier(SAMPLE_TABLE), sql.SQL(", ").join(names), sql.Literal(options.delimiter),
        sql.Literal(options.quote), sql.Literal(pg_encoding(options.encoding)))


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, data: bytes) -> int:
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy:
            copy.write(data)
        return cursor.rowcount


def _copy_sample(conn: psycopg.Connection[Any], reader: CsvReader, options: SourceSection, n_fields: int,
                 limit: int) -> tuple[list[int], bool]:
    """COPY up to `limit` records; returns the numbers of records COPY could not read, and whether
    a window ran past the limit (a quoted line break near it can make one longer than asked)."""
    record, unreadable = 1, []
    plain = _copy_statement(options, n_fields, numbered_records=False)
    with_numbers = _copy_statement(options, n_fields, numbered_records=True)
    sequence = sql.SQL("SELECT setval(pg_get_serial_sequence({}, '_rec'), %s, false)").format(sql.Literal(SAMPLE_TABLE))
    while record <= limit:
        window = reader.next_window(max_lines=limit - record + 1)  # lines >= records: never past the limit
        if window is None:
            break
        execute(conn, sequence, (record,), label="init: number")
        try:
            record += _copy(conn, plain, window.data)
            continue
        except _UNREADABLE:
            pass
        except psycopg.Error as exc:
            raise wrap(exc, f"init: copy {reader.path}") from exc
        found = isolate(window.data, first_record=record, n_fields=n_fields, encoding=options.encoding,
                        delimiter=options.delimiter, quote=options.quote)
        unreadable += [q.record for q in found.bad]
        try:
            _copy(conn, with_numbers, numbered(found.good, delimiter=options.delimiter, encoding=options.encoding))
        except _UNREADABLE:  # PostgreSQL refuses one the csv module took: one at a time, only here
            for number, raw in found.good:
                try:
                    _copy(conn, with_numbers, numbered([(number, raw)], delimiter=options.delimiter,
                                                       encoding=options.encoding))
                except _UNREADABLE:
                    unreadable.append(number)
        record += len(found.good) + len(found.bad)
    execute(conn, sql.SQL("DELETE FROM {} WHERE _rec > %s").format(sql.Identifier(SAMPLE_TABLE)), (limit,),
            label="init: cap")
    return sorted(n for n in unreadable if n <= limit), record - 1 > limit


# --- deciding the types ----------------------------------------------------------------------

_PARAMS = {
    "money": MONEY, "offset": OFFSET, "special_dt": SPECIAL_DATETIME, "special_num": SPECIAL_NUMBER,
    "zero_date": ZERO_DATE, "zero_marker": r"^0000-00-00([ T]00:00(:00)?)?$",
    "integer": r"^[+-]?[0-9]+$", "decimal": r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$",
    "leading_zero": r"^[+-]?0[0-9]", "time_of_day": r"[0-9]:[0-9]", "digits": r"^[0-9]+$",
    "money_shape": r"(,|\.[0-9]{2}$)",
}


def _value(i: int) -> sql.Composable:
    """A field as pgstage would see it after `normalize = ["trim"]`: spaces trimmed, empty → NULL."""
    return sql.SQL("NULLIF(btrim({}), '')").format(sql.Identifier(f"c{i + 1}"))


def _first_pass(n_fields: int) -> sql.Composed:
    """Counts, whether values carry spaces, and whether a column holds MySQL zero dates."""
    items: list[sql.Composable] = [sql.SQL("count(*)")]
    for i in range(n_fields):
        raw, v = sql.Identifier(f"c{i + 1}"), _value(i)
        items += [sql.SQL("count({})").format(v),
                  sql.SQL("coalesce(bool_or({0} <> btrim({0})), false)").format(raw),
                  sql.SQL("coalesce(bool_or({} ~ %(zero_marker)s), false)").format(v)]
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), sql.Identifier(SAMPLE_TABLE))


def _fields(i: int, zero: bool) -> tuple[sql.Composable, sql.Composable]:
    """v: the trimmed value; d: the same for date/time types, with zero dates as NULL where the column has them."""
    v = _value(i)
    d = sql.SQL("CASE WHEN {0} ~* %(zero_date)s THEN NULL ELSE {0} END").format(v) if zero else v
    return v, d


def _predicates(v: sql.Composable, d: sql.Composable) -> dict[str, tuple[sql.Composable, sql.Composable]]:
    """Per candidate type, in the order tried: (the value it judges, whether that value is valid input)."""
    def ok(template: str, x: sql.Composable = v) -> tuple[sql.Composable, sql.Composable]:
        return x, sql.SQL(template).format(x)

    integer = "pg_input_is_valid({0}, '%s') AND {0} ~ %%(integer)s AND {0} !~ %%(leading_zero)s"
    datetime = "pg_input_is_valid({0}, '%s') AND {0} !~* %%(special_dt)s"
    return {
        "boolean": ok("pg_input_is_valid({0}, 'boolean') AND {0} !~ %(digits)s"),
        "smallint": ok(integer % "smallint"),
        "integer": ok(integer % "integer"),
        "bigint": ok(integer % "bigint"),
        "money_cents": ok("{0} ~ %(money)s"),
        "numeric": ok("pg_input_is_valid({0}, 'numeric') AND {0} ~ %(decimal)s AND {0} !~ %(leading_zero)s"
                      " AND {0} !~* %(special_num)s"),
        "date": ok((datetime % "date") + " AND {0} !~ %(time_of_day)s", d),
        "timestamp": ok(datetime % "timestamp", d),
        "uuid": ok("pg_input_is_valid({0}, 'uuid')"),
    }


_KINDS = tuple(_predicates(sql.SQL("x"), sql.SQL("x")))


def _second_pass(n_fields: int, zero_columns: set[int]) -> sql.Composed:
    """Per column: how many values fail each candidate, the money shape, offsets, and empties."""
    items: list[sql.Composable] = []
    for i in range(n_fields):
        v, d = _fields(i, i in zero_columns)
        items += [sql.SQL("count(*) FILTER (WHERE {} IS NOT NULL AND NOT ({}))").format(x, valid)
                  for x, valid in _predicates(v, d).values()]
        items.append(sql.SQL("coalesce(bool_or({} ~ %(money_shape)s), false)").format(v))
        # An offset or zone: PostgreSQL's timestamp input silently drops it, timestamptz keeps it.
        items.append(sql.SQL(
            "coalesce(bool_or({0} ~ %(offset)s OR CASE WHEN pg_input_is_valid({0}, 'timestamp')"
            " AND pg_input_is_valid({0}, 'timestamptz') AND {0} !~* %(special_dt)s"
            " THEN ({0}::timestamptz AT TIME ZONE 'UTC') <> {0}::timestamp END), false)").format(d))
        items.append(sql.SQL("count(*) FILTER (WHERE {} IS NULL)").format(d))
    return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), sql.Identifier(SAMPLE_TABLE))


def _failing(conn: psycopg.Connection[Any], i: int, zero: bool, kind: str) -> tuple[str, ...]:
    """Up to three values that keep column i from being `kind`, as they stand in the file."""
    x, valid = _predicates(*_fields(i, zero))[kind]
    raw = sql.Identifier(f"c{i + 1}")
    rows = execute(conn, sql.SQL(
        "SELECT {0} FROM {1} WHERE {2} IS NOT NULL AND NOT ({3}) GROUP BY {0} ORDER BY min(_rec) LIMIT 3").format(
        raw, sql.Identifier(SAMPLE_TABLE), x, valid), _PARAMS, label="init: near miss").fetchall()
    return tuple(str(r[0]) for r in rows)


def _examples(conn: psycopg.Connection[Any], i: int) -> tuple[str, ...]:
    raw = sql.Identifier(f"c{i + 1}")
    rows = execute(conn, sql.SQL(
        "SELECT {0} FROM {1} WHERE {2} IS NOT NULL GROUP BY {0} ORDER BY min(_rec) LIMIT 3").format(
        raw, sql.Identifier(SAMPLE_TABLE), _value(i)), label="init: examples").fetchall()
    return tuple(str(r[0]) for r in rows)


_CAST = {"money_cents": "replace({}, ',', '')::numeric", "text": "{}"}


def _unique(conn: psycopg.Connection[Any], columns: list[tuple[int, str]]) -> set[int]:
    """Which never-empty columns are unique in the sample, compared as their typed values."""
    if not columns:
        return set()
    items = [sql.SQL("count(DISTINCT " + _CAST.get(kind, "({})::" + kind) + ") = count(*)").format(_value(i))
             for i, kind in columns]
    row = execute(conn, sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(items), sql.Identifier(SAMPLE_TABLE)),
                  label="init: keys").fetchone()
    assert row is not None
    return {i for (i, _), unique in zip(columns, row) if unique}


def _profile(conn: psycopg.Connection[Any], fields: tuple[str, ...], delimiter: str, more: bool,
             unreadable: tuple[int, ...]) -> SampleProfile:
    n = len(fields)
    first = execute(conn, _first_pass(n), _PARAMS, label="init: counts").fetchone()
    assert first is not None
    records = int(first[0])
    zero_columns = {i for i in range(n) if first[1 + 3 * i + 2]}
    second = execute(conn, _second_pass(n, zero_columns), _PARAMS, label="init: types").fetchone()
    assert second is not None
    names = column_names(fields)
    repeated = {f for f in fields if fields.count(f) > 1}
    width = len(_KINDS) + 3
    drafts: dict[int, ColumnDraft] = {}
    for i, header in enumerate(fields):
        if header in repeated:
            continue
        values, needs_trim = int(first[1 + 3 * i]), bool(first[1 + 3 * i + 1])
        results = second[width * i:width * (i + 1)]
        failures = dict(zip(_KINDS, (int(r) for r in results[:len(_KINDS)])))
        money_shape, zone, empty_after = bool(results[-3]), bool(results[-2]), int(results[-1])
        kind = _decide(names[i], failures, values, money_shape, zone)
        zero = i in zero_columns and kind in _DATE_TYPES
        empty = empty_after if zero else records - values
        notes: list[str] = []
        if values == 0:
            notes.append("every sampled value is empty: text until the data says otherwise")
        if needs_trim:
            notes.append("values carry leading or trailing spaces: trimmed")
        if zero:
            notes.append("0000-00-00 stands for 'no date': read as NULL")
        if kind == "text" and values:
            notes += _near_miss(conn, i, i in zero_columns, names[i], failures, values, zone)
        drafts[i] = ColumnDraft(header, names[i], kind, required=values > 0 and empty == 0, values=records - empty,
                                empty=empty, examples=_examples(conn, i), trim=needs_trim, zero_is_null=zero,
                                notes=tuple(notes))
    keyable = [(i, d.type) for i, d in drafts.items() if d.required and d.type != "boolean"]
    unique = _unique(conn, keyable)
    keys = tuple(drafts[i].name for i in sorted(unique))
    return SampleProfile(delimiter, records, more, tuple(drafts.values()), keys, unreadable,
                         tuple(dict.fromkeys(f for f in fields if f in repeated)))


def _amount_name(name: str) -> bool:
    return any(_AMOUNT.match(token) for token in name.split("_"))


def _decide(name: str, failures: dict[str, int], values: int, money_shape: bool, zone: bool) -> str:
    """The narrowest candidate every value fits; money_cents needs an amount-like name and decimal shape too."""
    if values == 0:
        return "text"
    for kind in _KINDS:
        if kind == "money_cents" and not (money_shape and _amount_name(name)):
            continue
        if failures[kind] == 0:
            return "timestamptz" if kind == "timestamp" and zone else kind
    return "text"


# A column stays text when a few values do not fit; say which type they kept it from.
NEAR_MISS = 0.05


def _near_miss(conn: psycopg.Connection[Any], i: int, zero: bool, name: str, failures: dict[str, int], values: int,
               zone: bool) -> list[str]:
    for kind in _KINDS:
        if kind == "boolean" or (kind == "money_cents" and not _amount_name(name)):
            continue
        if failures[kind] <= values * NEAR_MISS:
            shown = "timestamptz" if kind == "timestamp" and zone else kind
            bad = _example_text(_failing(conn, i, zero, kind))
            return [f"{failures[kind]:,} of {values:,} values are not valid {shown} (e.g. {bad}); they keep this"
                    f" column text: with type = \"{shown}\" they would be rejected"]
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
        f"# Drafted by `pgstage init` from {sample.name} ({scope}): each type is the narrowest one every",
        "# sampled value fits, as PostgreSQL's pg_input_is_valid judged it. Review the types and the key,",
        "# and add rules (min, max, regex, in, checks) before loading for real: see docs/init.md.",
    ]
    if profile.unreadable:
        numbers = ", ".join(str(n) for n in profile.unreadable[:10]) + (" ..." if len(profile.unreadable) > 10 else "")
        lines.append(f"# {len(profile.unreadable)} record(s) could not be read at all (records {numbers}):"
                     " they will be rejected as `parse`.")
    lines += ["", "[pipeline]", f"name = {toml_string(name)}", f"target = {toml_string(target)}"]
    if profile.candidate_keys:
        lines.append(f"# candidate keys (unique and never empty in the sample): {', '.join(profile.candidate_keys)}")
        key = profile.candidate_keys[0]
    else:
        lines.append("# no column is unique and never empty in the sample: choose the business key"
                     " (several columns may form it)")
        key = next((c.name for c in columns if c.required), columns[0].name)
    lines += [f"key = [{toml_string(key)}]", 'strategy = "upsert"', "", "[source]",
              f"path = {toml_string(source_path)}", f"delimiter = {toml_string(profile.delimiter)}"]
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
