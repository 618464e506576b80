"""Stage: COPY each file into an UNLOGGED, unindexed table with record numbers.

Happy path: record-aligned byte windows go to COPY untouched; the record number comes from
a sequence reset at each window's first record. A window COPY refuses is isolated and only
its broken records are kept aside; the rest of it still loads.

The table's shape follows the source kind:
- CSV and Parquet: one `text` column per field (`f1`, `f2`, ...). Parquet windows are CSV
  written by Arrow, so both share the COPY and the quarantine.
- JSON Lines: one `jsonb` column `doc`; COPY hands each line to PostgreSQL's JSON parser
  whole (quote and delimiter are control bytes JSON never holds unescaped), so every line is
  parsed exactly once, in C. A field is `doc ->> 'name'` or `doc #>> '{path,to,field}'`.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults
from pgstage.db import copy as db_copy
from pgstage.db import execute, qualified, wrap
from pgstage.errors import HeaderMismatch, Location
from pgstage.pipeline._quarantine import Quarantined, isolate, json_lines, numbered, printable
from pgstage.pipeline._screen import applies, screen
from pgstage.pipeline.extract import CsvReader, Header, JsonlReader, ParquetReader, SourceFile, Window
from pgstage.pipeline.extract.csv import ByteWindows
from pgstage.pipeline.extract.jsonl import COPY_DELIMITER, COPY_QUOTE
from pgstage.pipeline.extract.postgres import PostgresReader
from pgstage.names import LEDGER_SCHEMA, NO_AUTOVACUUM
from pgstage.spec import Spec, pg_encoding

Reader = CsvReader | JsonlReader | ParquetReader | PostgresReader


@dataclass(frozen=True)
class CsvDialect:
    """How the CSV bytes given to COPY are written."""

    delimiter: str
    quote: str
    encoding: str


ARROW_CSV = CsvDialect(",", '"', "utf-8")   # what pyarrow.csv.write_csv (and COPY TO, in UTF8) writes


def raw_names(fields: tuple[str, ...]) -> list[str]:
    """JSON keys for a record's raw values: the field names, made unique (`note`, `note#2`)."""
    seen: dict[str, int] = {}
    keys = []
    for name in fields:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def json_field(name: str) -> sql.Composable:
    """A JSON Lines field as text: a top-level key, or a dotted path into nested objects (and arrays).

    A key that itself contains dots (`"log.level"`, as ECS logs write) wins over the path.
    JSON null, a missing key and a path through null are all SQL NULL.
    """
    doc = sql.Identifier("doc")
    key = sql.SQL("({} ->> {})").format(doc, sql.Literal(name))
    if "." not in name:
        return key
    path = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(p) for p in name.split(".")))
    return sql.SQL("COALESCE({}, {} #>> {})").format(key, doc, path)


@dataclass
class StagedBatch:
    """One batch of a file in its staging table: where it lies in the file, what COPY refused."""

    source: SourceFile
    file_no: int                              # position of the file in the run (later files win ties)
    batch_no: int
    table: str
    header: Header                            # the staged fields (none for JSON Lines)
    field_of: dict[str, int]                  # source field name -> staging column position
    byte_start: int                           # stream offset (Parquet: row index) of the first record
    byte_end: int
    record_start: int                         # record number of the batch's first record
    read: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    placeholders: list[int] = field(default_factory=list)   # rows standing in for quarantined records
    ignored_fields: tuple[str, ...] = ()
    kind: str = "csv"
    spanned: int = 0                          # record numbers used: `read` plus JSON Lines' blank lines
    staging: tuple[float, float] | None = None   # when its staging began and ended (Unix seconds)

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(LEDGER_SCHEMA, self.table)

    def rows(self) -> sql.Composable:
        """The staged records as a FROM item: the table, less any placeholder rows."""
        if not self.placeholders:
            return self.ident
        return sql.SQL("(SELECT * FROM {} s WHERE NOT EXISTS (SELECT FROM unnest({}::bigint[]) p(n) WHERE p.n = s._rec))"
                       ).format(self.ident, sql.Literal(self.placeholders))

    @property
    def record_end(self) -> int:
        return self.record_start + max(self.spanned, self.read) - 1

    def column(self, source_field: str) -> sql.Composable:
        """The SQL expression (text) of a source field in the staging table."""
        if self.kind == "jsonl":
            return json_field(source_field)
        return sql.Identifier(f"f{self.field_of[source_field] + 1}")

    def raw_record(self, alias: sql.Identifier) -> sql.Composable:
        """The record as jsonb for pgstage.rejects: JSON Lines' whole object, else {field: text}."""
        return self.raw_from_values(self.raw_values(alias))

    def raw_values(self, alias: sql.Identifier) -> sql.Composable:
        """The record's raw values in one cheap datum (a text[] or the JSON object), to build `raw_record` later."""
        if self.kind == "jsonl":
            return sql.SQL("{}.doc").format(alias)
        values = sql.SQL(", ").join(sql.SQL("{}.{}").format(alias, sql.Identifier(f"f{i + 1}"))
                                    for i in range(len(self.header.fields)))
        return sql.SQL("ARRAY[{}]::text[]").format(values)

    def raw_from_values(self, values: sql.Composable) -> sql.Composable:
        if self.kind == "jsonl":
            return values
        names = sql.SQL(", ").join(sql.Literal(f) for f in raw_names(self.header.fields))
        return sql.SQL("jsonb_object(ARRAY[{}]::text[], {})").format(names, values)


@dataclass(frozen=True)
class StartPoint:
    """Where staging of a file begins: the start, or just after its last merged batch."""

    byte_offset: int | None = None
    record: int = 1
    batch_no: int = 0
    changed: bool = False     # the file's bytes differ from those of the merged batches


def match_header(spec: Spec, header: Header, file: str) -> tuple[dict[str, int], tuple[str, ...]]:
    """Map the spec's source fields to positions; explain every missing or ambiguous one at once."""
    needed = spec.source_fields()
    problems: list[str] = []
    positions: dict[str, int] = {}
    for name in needed:
        found = header.positions(name)
        if not found:
            close = difflib.get_close_matches(name, header.fields, n=1, cutoff=0.6)
            problems.append(f"field {name!r} is missing" + (f" (did you mean {close[0]!r}?)" if close else ""))
        elif len(found) > 1:
            problems.append(f"field {name!r} appears {len(found)} times (positions {', '.join(str(p + 1) for p in found)})")
        else:
            positions[name] = found[0]
    if problems:
        unused = [f for f in header.fields if f not in needed]
        raise HeaderMismatch(
            "the header does not match the spec: " + "; ".join(problems),
            location=Location(file=file, line=1),
            hint=(f"fields in the file that the spec does not use: {', '.join(map(repr, unused))}" if unused
                  else "fix the columns' `from` names in the spec or the file's header"))
    ignored = tuple(dict.fromkeys(f for f in header.fields if f not in positions))
    return positions, ignored


def _open(spec: Spec, source: SourceFile, start: int | None = None, since: datetime | None = None) -> Reader:
    if spec.source.kind == "postgres":  # re-extracted whole on resume: `start` does not apply
        return PostgresReader(spec.source, since=since, name=source.name)
    if spec.source.kind == "jsonl":
        return JsonlReader(source.path, start=start, member=source.member)
    if spec.source.kind == "parquet":
        return ParquetReader(source.path, start=start, member=source.member)
    return CsvReader(source.path, spec.source, start=start, member=source.member)


def _layout(spec: Spec, source: SourceFile, reader: Reader) -> tuple[Header, dict[str, int], tuple[str, ...]]:
    """The staged fields, their positions and the file's unused fields.

    CSV stages every field (COPY cannot skip any); Parquet only those the spec reads, unless
    `load.raw_column` keeps whole records (then every field text can carry); JSON Lines keeps
    each line whole.
    """
    if isinstance(reader, JsonlReader):
        return Header(()), {}, ()
    field_of, ignored = match_header(spec, reader.header, source.name)
    if isinstance(reader, PostgresReader):
        staged = reader.select(tuple(field_of))
        return Header(staged), {name: staged.index(name) for name in staged}, ignored
    if isinstance(reader, ParquetReader):
        if spec.load.raw_column:
            staged = tuple(dict.fromkeys(f for f in reader.header.fields if f in field_of or reader.textual(f)))
        else:
            staged = tuple(field_of) or reader.header.fields[:1]   # a spec of constants still counts the rows
        reader.select(staged)
        return Header(staged), {name: staged.index(name) for name in field_of}, ignored
    return reader.header, field_of, ignored


def header_of(spec: Spec, source: SourceFile) -> tuple[Header, dict[str, int], tuple[str, ...]]:
    """Read a file's header and map it to the spec (raises HeaderMismatch before anything is written)."""
    with _open(spec, source) as reader:
        return _layout(spec, source, reader)


def _create(conn: psycopg.Connection[Any], table: str, columns: sql.Composable) -> None:
    ident = sql.Identifier(LEDGER_SCHEMA, table)
    seq = sql.Identifier(LEDGER_SCHEMA, f"{table}_rec")
    # One transaction: a crash between the two would leave a sequence that no orphan sweep finds
    # (it looks for tables) and that the next attempt could not create again.
    with conn.transaction():
        # CACHE: one backend numbers the rows, and an uncached nextval() per row costs a quarter of the COPY.
        execute(conn, sql.SQL("CREATE SEQUENCE {} CACHE 10000").format(seq), label="stage: sequence")
        execute(conn, sql.SQL("CREATE UNLOGGED TABLE {} (_rec bigint NOT NULL DEFAULT nextval({}), {})" + NO_AUTOVACUUM).format(
            ident, sql.Literal(qualified(LEDGER_SCHEMA, f"{table}_rec")), columns), label="stage: create")


def build_drop(tables: Sequence[str]) -> sql.Composed:
    """Scratch tables of the ledger schema and their record sequences, dropped by one statement string.

    Sent without parameters, the two statements travel in one round trip and run in one
    transaction: one commit (a WAL flush) for a batch's staging and checked tables instead of
    four, and no sequence outlives its table when a crash falls between the two drops.
    """
    return sql.SQL("DROP TABLE IF EXISTS {}; DROP SEQUENCE IF EXISTS {}").format(
        sql.SQL(", ").join(sql.Identifier(LEDGER_SCHEMA, t) for t in tables),
        sql.SQL(", ").join(sql.Identifier(LEDGER_SCHEMA, f"{t}_rec") for t in tables))


def drop(conn: psycopg.Connection[Any], *tables: str) -> None:
    if tables:
        execute(conn, build_drop(tables), label="stage: drop")


# A file is cut into batches of at least this many records to keep every worker busy.
MIN_SPLIT_RECORDS = 50_000


def split_size(batch_rows: int, parallel: int, remaining_bytes: int | None, window: Window, records: int) -> int:
    """Records per batch: `batch_rows`, or fewer so that a file spreads over `parallel` workers.

    A file of 1M records with two workers becomes two batches merged at once instead of one.
    The number of records is estimated from the first window (plain files only: a compressed
    size says nothing). Where batches end has no bearing on the result: cross-batch dedup goes
    by record number, which is the record's place in the file.
    """
    if parallel < 2 or remaining_bytes is None or records <= 0 or window.end <= window.offset:
        return batch_rows
    estimate = remaining_bytes * records // (window.end - window.offset)
    if estimate < 2 * MIN_SPLIT_RECORDS:
        return batch_rows
    # 10% over the even share: an estimate a little short must not leave a tiny last batch.
    return min(batch_rows, max(MIN_SPLIT_RECORDS, estimate * 11 // (10 * parallel) + 1))


def stage_batches(conn: psycopg.Connection[Any], spec: Spec, source: SourceFile, *, file_no: int, table_prefix: str,
                  start: StartPoint, batch_rows: int, since: datetime | None = None,
                  parallel: int = 1, pause: Callable[[], None] | None = None) -> Generator[StagedBatch, None, None]:
    """COPY a file, from `start`, into one staging table per batch of about batch_rows records.

    `since` is a postgres source's committed watermark (None: extract every row); `parallel`
    how many workers validate and merge the batches (see `split_size`); `pause` is called before
    each window is sent, outside any transaction (the throttle, pgstage/throttle.py).
    """
    kind = spec.source.kind
    with _open(spec, source, start.byte_offset, since) as reader:
        header, field_of, ignored = _layout(spec, source, reader)
        if kind == "jsonl":
            columns: sql.Composable = sql.SQL("doc jsonb")
        else:
            columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"f{i + 1}"))
                                         for i in range(len(header.fields)))
        dialect = (ARROW_CSV if kind in ("parquet", "postgres") else
                   CsvDialect(spec.source.delimiter, spec.source.quote, spec.source.encoding))
        record, batch_no = start.record, start.batch_no
        batch: StagedBatch | None = None
        first, dirt = True, _Dirt()
        began = time.time()
        while True:
            remaining = batch_rows - (batch.read if batch else 0)
            window = reader.next_window(max_lines=remaining)
            if window is None:
                break
            if first:
                size = reader.plain_size() if isinstance(reader, ByteWindows) else None
                batch_rows = split_size(batch_rows, parallel, None if size is None else size - window.offset, window,
                                        window.data.count(b"\n"))
                first = False
            if batch is None:
                table = f"{table_prefix}_{batch_no}"
                _create(conn, table, columns)
                batch = StagedBatch(source, file_no, batch_no, table, header, field_of, window.offset, window.end, record,
                                    ignored_fields=ignored, kind=kind)
            if pause is not None:
                pause()
            if kind == "jsonl":
                read, spanned = _copy_json_window(conn, batch, window.data, record)
            else:
                read = spanned = _copy_window(conn, batch, window.data, record, dialect, dirt)
            record += spanned
            batch.read += read
            batch.spanned += spanned
            batch.byte_end = window.end
            faults.hit("stage.window")
            if batch.read >= batch_rows:
                _finish(conn, batch)
                batch.staging = (began, time.time())
                yield batch
                batch, batch_no, began = None, batch_no + 1, time.time()
        if batch is not None:
            _finish(conn, batch)
            batch.staging = (began, time.time())
            yield batch


# --- CSV (and Parquet, written as CSV) ---------------------------------------------------------------

# What COPY says about a record it cannot read at all (as opposed to a failure of the load).
_UNREADABLE = (psycopg.errors.BadCopyFileFormat, psycopg.errors.CharacterNotInRepertoire,
               psycopg.errors.UntranslatableCharacter)
_SPLIT = ("COPY does not read this as one record: a quote inside an unquoted value starts a quoted part"
          " for PostgreSQL, and a carriage return outside quotes ends a line (quote the whole value)")


def csv_copy(table: sql.Composable, n_fields: int, dialect: CsvDialect, *, numbered: bool) -> sql.Composed:
    """COPY of CSV into `table`'s text columns f1..fN (and `_rec` first when the data carries it)."""
    names = sql.SQL(", ").join(sql.Identifier(f"f{i + 1}") for i in range(n_fields))
    columns = sql.SQL("_rec, {}").format(names) if numbered else names
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, DELIMITER {}, QUOTE {}, ENCODING {})").format(
        table, columns, sql.Literal(dialect.delimiter), sql.Literal(dialect.quote),
        sql.Literal(pg_encoding(dialect.encoding)))


def _copy_statement(batch: StagedBatch, dialect: CsvDialect, *, numbered: bool) -> sql.Composed:
    return csv_copy(batch.ident, len(batch.header.fields), dialect, numbered=numbered)


def _number_from(conn: psycopg.Connection[Any], batch: StagedBatch, record: int) -> None:
    number_from(conn, qualified(LEDGER_SCHEMA, f"{batch.table}_rec"), record)


def number_from(conn: psycopg.Connection[Any], sequence: str, record: int) -> None:
    """The next row COPY inserts gets record number `record` (`sequence`: `_rec`'s, as db.qualified spells it)."""
    execute(conn, sql.SQL("SELECT setval(%s::regclass, %s, false)"), (sequence, record), label="stage: number")


@dataclass
class _Dirt:
    """Whether a file's windows are screened before COPY sees them: after a refusal, until
    several windows in a row screen clean. A dirty file then pays one COPY per window, not a
    refused one and a second one."""

    screen_first: bool = False
    clean: int = 0


CLEAN_WINDOWS_TO_TRUST = 8


def _copy_window(conn: psycopg.Connection[Any], batch: StagedBatch, data: bytes, record: int,
                 dialect: CsvDialect, dirt: _Dirt) -> int:
    """COPY one window; on refusal isolate its broken records. Returns how many records it held."""
    args: dict[str, Any] = {"first_record": record, "n_fields": len(batch.header.fields), "encoding": dialect.encoding,
                            "delimiter": dialect.delimiter, "quote": dialect.quote}
    screened, screened_already = None, dirt.screen_first
    if dirt.screen_first:
        screened = screen(data, **args)
        if screened is None:          # nothing suspect: COPY it as it is
            dirt.clean += 1
            dirt.screen_first = dirt.clean < CLEAN_WINDOWS_TO_TRUST
    if screened is None:
        _number_from(conn, batch, record)
        try:
            return _copy(conn, _copy_statement(batch, dialect, numbered=False), data)
        except _UNREADABLE:
            pass
        except psycopg.Error as exc:
            raise wrap(exc, f"stage: copy {batch.source.name}") from exc
        dirt.screen_first, dirt.clean = applies(args["n_fields"], dialect.encoding, dialect.delimiter, dialect.quote), 0
        if not screened_already:
            screened = screen(data, **args)
    if screened is not None:
        _number_from(conn, batch, record)
        try:
            _copy(conn, _copy_statement(batch, dialect, numbered=False), screened.payload)
        except _UNREADABLE:
            screened = None   # COPY refuses something the screen let through: isolate the whole window
        except psycopg.Error as exc:
            raise wrap(exc, f"stage: copy {batch.source.name}") from exc
    if screened is not None:
        batch.placeholders.extend(screened.placeholders)
        batch.quarantined.extend(screened.bad)
        batch.quarantined.sort(key=lambda q: q.record)
        return screened.records
    found = isolate(data, **args)
    refused = _copy_records(conn, _copy_statement(batch, dialect, numbered=True), found.good, dialect)
    batch.quarantined.extend(sorted([*found.bad, *refused], key=lambda q: q.record))
    return len(found.good) + len(found.bad)


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, data: bytes | list[bytes | memoryview]) -> int:
    """COPY the bytes, given whole or in pieces (a screened window), in one statement."""
    with conn.cursor() as cursor:
        with db_copy(cursor, statement, label="stage: copy") as copy:
            for piece in [data] if isinstance(data, bytes) else data:
                copy.write(piece)
            faults.hit("stage.copy")
        return cursor.rowcount


def _copy_records(conn: psycopg.Connection[Any], statement: sql.Composed, records: list[tuple[int, str]],
                  dialect: CsvDialect) -> list[Quarantined]:
    """COPY records the csv module accepted; should PostgreSQL still refuse some, bisect down to them."""
    if not records:
        return []
    try:
        _copy(conn, statement, numbered(records, delimiter=dialect.delimiter, encoding=dialect.encoding))
        return []
    except (*_UNREADABLE, psycopg.errors.InvalidTextRepresentation) as exc:
        # The record number is the only typed field, so a value it refuses is a piece of a
        # record COPY cut elsewhere than the csv module did: a quote inside an unquoted value
        # opens a quoted part for COPY, and a carriage return it then sees outside quotes
        # ends a line. COPY is one statement: nothing of the refused payload was written.
        if len(records) == 1:
            number, raw = records[0]
            reason = (_SPLIT if isinstance(exc, psycopg.errors.InvalidTextRepresentation)
                      else exc.diag.message_primary or str(exc))
            return [Quarantined(number, printable(raw), reason)]
    except psycopg.Error as exc:
        raise wrap(exc, "stage: copy") from exc
    middle = len(records) // 2
    return (_copy_records(conn, statement, records[:middle], dialect)
            + _copy_records(conn, statement, records[middle:], dialect))


# What `pgstage init` uses to COPY its sample the way a run stages a file.
UNREADABLE = _UNREADABLE
copy_data = _copy
copy_records = _copy_records


# --- JSON Lines -------------------------------------------------------------------------------------

# A line `\.` alone ends COPY's data in CSV mode before PostgreSQL 18, silently dropping the rest.
_END_OF_DATA = re.compile(rb"(?m)^\\\.\r?$")
_LINES = "pgstage_json_lines"   # a temporary table, one per session, for windows COPY refused


def _json_copy(target: sql.Composable, column: str) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, QUOTE {}, DELIMITER {}, ENCODING 'UTF8')").format(
        target, sql.Identifier(column), sql.Literal(COPY_QUOTE), sql.Literal(COPY_DELIMITER))


def _copy_json_window(conn: psycopg.Connection[Any], batch: StagedBatch, data: bytes, record: int) -> tuple[int, int]:
    """COPY a window of lines into `doc`; returns (records read, record numbers used).

    A blank line keeps its number (record numbers are line numbers) but is not a record: COPY
    reads it as NULL and its WHERE drops it. Any line PostgreSQL refuses sends the window to
    `_isolate_json`.
    """
    lines = data.count(b"\n")
    _number_from(conn, batch, record)
    if not (b"\\." in data and _END_OF_DATA.search(data)):
        statement = sql.SQL("{} WHERE doc IS NOT NULL").format(_json_copy(batch.ident, "doc"))
        try:
            return _copy(conn, statement, data), lines
        except psycopg.errors.DataError:
            pass
        except psycopg.Error as exc:
            raise wrap(exc, f"stage: copy {batch.source.name}") from exc
    return _isolate_json(conn, batch, data, record), lines


def _isolate_json(conn: psycopg.Connection[Any], batch: StagedBatch, data: bytes, record: int) -> int:
    """Load the parseable lines of a refused window and quarantine the others; returns the records read.

    Set-based where it can be: the lines go to a text table as they are, and PostgreSQL
    itself sorts them (`pg_input_is_valid`) and words the reasons (`pg_input_error_info`).
    Only when even that COPY fails (bad UTF-8, NUL, stray control bytes) does Python split
    the window into lines.
    """
    lines = sql.Identifier(_LINES)
    execute(conn, sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (n bigserial, line text)").format(lines),
            label="stage: json lines table")
    execute(conn, sql.SQL("TRUNCATE {} RESTART IDENTITY").format(lines), label="stage: json lines reset")
    undecodable: list[Quarantined] = []
    if not _copy_lines(conn, lines, data):
        texts, undecodable = json_lines(data, first_record=record)
        try:
            with conn.cursor() as cursor:
                with db_copy(cursor, sql.SQL("COPY {} (n, line) FROM STDIN").format(lines),
                             label="stage: copy json lines") as copy:
                    for number, text in texts:
                        copy.write_row((number - record + 1, text))
        except psycopg.Error as exc:
            raise wrap(exc, f"stage: copy {batch.source.name}") from exc
    params = {"first": record}
    loaded = execute(conn, sql.SQL(
        "INSERT INTO {} (_rec, doc) SELECT %(first)s + n - 1, line::jsonb FROM {}"
        " WHERE pg_input_is_valid(line, 'jsonb')").format(batch.ident, lines), params,
        label="stage: json lines load").rowcount
    broken = execute(conn, sql.SQL(
        "SELECT %(first)s + n - 1, line, e.message, e.detail FROM {} CROSS JOIN LATERAL pg_input_error_info(line, 'jsonb') e"
        " WHERE btrim(line, E' \\t\\r') <> '' AND NOT pg_input_is_valid(line, 'jsonb') ORDER BY n").format(lines),
        params, label="stage: json lines refused").fetchall()
    refused = [Quarantined(int(n), printable(line), f"{message}: {detail}" if detail else message)
               for n, line, message, detail in broken]
    batch.quarantined.extend(sorted([*undecodable, *refused], key=lambda q: q.record))
    return loaded + len(undecodable) + len(refused)


def _copy_lines(conn: psycopg.Connection[Any], lines: sql.Identifier, data: bytes) -> bool:
    """COPY a window's lines as text, numbered from 1; False (and nothing copied) when COPY refuses it."""
    if b"\\." in data and _END_OF_DATA.search(data):
        return False
    try:
        _copy(conn, _json_copy(lines, "line"), data)
        return True
    except psycopg.errors.DataError:
        execute(conn, sql.SQL("TRUNCATE {} RESTART IDENTITY").format(lines), label="stage: json lines reset")
        return False
    except psycopg.Error as exc:
        raise wrap(exc, "stage: copy lines") from exc


def _finish(conn: psycopg.Connection[Any], batch: StagedBatch) -> None:
    """Last staging step of a batch: a JSON Lines line must hold an object, not an array or a scalar."""
    if batch.kind != "jsonl":
        return
    rows = execute(conn, sql.SQL(
        "DELETE FROM {} WHERE jsonb_typeof(doc) <> 'object' RETURNING _rec, doc::text, jsonb_typeof(doc)").format(
        batch.ident), label="stage: json non-objects").fetchall()
    if rows:
        batch.quarantined.extend(
            Quarantined(int(rec), printable(text), f"the line holds a JSON {kind}, not an object") for rec, text, kind in rows)
        batch.quarantined.sort(key=lambda q: q.record)
