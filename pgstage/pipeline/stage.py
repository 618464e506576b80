"""Stage: COPY each file into an UNLOGGED, unindexed, all-text table with record numbers.

Happy path: record-aligned byte windows go to COPY untouched; the record number comes from
a sequence reset at each window's first record. A window COPY refuses is isolated by
`_quarantine` and only its broken records are kept aside; the rest of it still loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults
from pgstage.db import execute, wrap
from pgstage.errors import HeaderMismatch, Location
from pgstage.pipeline._quarantine import Quarantined, isolate, numbered, printable
from pgstage.pipeline.extract import CsvReader, Header, SourceFile
from pgstage.spec import SourceSection, Spec, pg_encoding

LEDGER_SCHEMA = "pgstage"

@dataclass
class StagedBatch:
    """One batch of a file in its staging table: where it lies in the file, what COPY refused."""

    source: SourceFile
    file_no: int                              # position of the file in the run (later files win ties)
    batch_no: int
    table: str
    header: Header
    field_of: dict[str, int]                  # source field name -> staging column position
    byte_start: int
    byte_end: int
    record_start: int                         # record number of the batch's first record
    read: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    ignored_fields: tuple[str, ...] = ()

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(LEDGER_SCHEMA, self.table)

    @property
    def record_end(self) -> int:
        return self.record_start + self.read - 1

    def column(self, source_field: str) -> sql.Identifier:
        return sql.Identifier(f"f{self.field_of[source_field] + 1}")


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


def _create(conn: psycopg.Connection[Any], table: str, n_fields: int) -> None:
    ident = sql.Identifier(LEDGER_SCHEMA, table)
    seq = sql.Identifier(LEDGER_SCHEMA, f"{table}_rec")
    columns = sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(f"f{i + 1}")) for i in range(n_fields))
    execute(conn, sql.SQL("CREATE SEQUENCE {} ").format(seq), label="stage: sequence")
    execute(conn, sql.SQL("CREATE UNLOGGED TABLE {} (_rec bigint NOT NULL DEFAULT nextval({}), {})").format(
        ident, sql.Literal(f"{LEDGER_SCHEMA}.{table}_rec"), columns), label="stage: create")


def drop(conn: psycopg.Connection[Any], table: str) -> None:
    execute(conn, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA, table)), label="stage: drop")
    execute(conn, sql.SQL("DROP SEQUENCE IF EXISTS {}").format(sql.Identifier(LEDGER_SCHEMA, f"{table}_rec")),
            label="stage: drop sequence")


def header_of(spec: Spec, source: SourceFile) -> tuple[Header, dict[str, int], tuple[str, ...]]:
    """Read a file's header and map it to the spec (raises HeaderMismatch before anything is written)."""
    with CsvReader(source.path, spec.source) as reader:
        field_of, ignored = match_header(spec, reader.header, source.name)
        return reader.header, field_of, ignored


def stage_batches(conn: psycopg.Connection[Any], spec: Spec, source: SourceFile, *, file_no: int, table_prefix: str,
                  start: StartPoint, batch_rows: int) -> Iterator[StagedBatch]:
    """COPY a file, from `start`, into one staging table per batch of about batch_rows records."""
    options = spec.source
    with CsvReader(source.path, options, start=start.byte_offset) as reader:
        field_of, ignored = match_header(spec, reader.header, source.name)
        n_fields = len(reader.header.fields)
        names = sql.SQL(", ").join(sql.Identifier(f"f{i + 1}") for i in range(n_fields))
        record, batch_no = start.record, start.batch_no
        batch: StagedBatch | None = None
        while True:
            remaining = batch_rows - (batch.read if batch else 0)
            window = reader.next_window(max_lines=remaining)
            if window is None:
                break
            if batch is None:
                table = f"{table_prefix}_{batch_no}"
                _create(conn, table, n_fields)
                batch = StagedBatch(source, file_no, batch_no, table, reader.header, field_of, window.offset, window.end, record,
                                    ignored_fields=ignored)
            consumed = _copy_window(conn, batch, names, window.data, record, n_fields, options)
            record += consumed
            batch.read += consumed
            batch.byte_end = window.end
            faults.hit("stage.window")
            if batch.read >= batch_rows:
                yield batch
                batch, batch_no = None, batch_no + 1
        if batch is not None:
            yield batch


# What COPY says about a record it cannot read at all (as opposed to a failure of the load).
_UNREADABLE = (psycopg.errors.BadCopyFileFormat, psycopg.errors.CharacterNotInRepertoire,
               psycopg.errors.UntranslatableCharacter)


def _copy_statement(batch: StagedBatch, names: sql.Composable, options: SourceSection, *, numbered: bool) -> sql.Composed:
    columns = sql.SQL("_rec, {}").format(names) if numbered else names
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, DELIMITER {}, QUOTE {}, ENCODING {})").format(
        batch.ident, columns, sql.Literal(options.delimiter), sql.Literal(options.quote),
        sql.Literal(pg_encoding(options.encoding)))


def _copy_window(conn: psycopg.Connection[Any], batch: StagedBatch, names: sql.Composable, data: bytes, record: int,
                 n_fields: int, options: SourceSection) -> int:
    """COPY one window; on refusal isolate its broken records. Returns how many records it held."""
    execute(conn, sql.SQL("SELECT setval({}, {}, false)").format(
        sql.Literal(f"{LEDGER_SCHEMA}.{batch.table}_rec"), sql.Literal(record)), label="stage: number")
    try:
        return _copy(conn, _copy_statement(batch, names, options, numbered=False), data)
    except _UNREADABLE:
        pass
    except psycopg.Error as exc:
        raise wrap(exc, f"stage: copy {batch.source.name}") from exc
    found = isolate(data, first_record=record, n_fields=n_fields, encoding=options.encoding,
                    delimiter=options.delimiter, quote=options.quote)
    refused = _copy_records(conn, _copy_statement(batch, names, options, numbered=True), found.good, options)
    batch.quarantined.extend(sorted([*found.bad, *refused], key=lambda q: q.record))
    return len(found.good) + len(found.bad)


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, data: bytes) -> int:
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy:
            copy.write(data)
            faults.hit("stage.copy")
        return cursor.rowcount


def _copy_records(conn: psycopg.Connection[Any], statement: sql.Composed, records: list[tuple[int, str]],
                  options: SourceSection) -> list[Quarantined]:
    """COPY records the csv module accepted; should PostgreSQL still refuse some, bisect down to them."""
    if not records:
        return []
    try:
        _copy(conn, statement, numbered(records, delimiter=options.delimiter, encoding=options.encoding))
        return []
    except _UNREADABLE as exc:
        if len(records) == 1:
            number, raw = records[0]
            return [Quarantined(number, printable(raw), exc.diag.message_primary or str(exc))]
    except psycopg.Error as exc:
        raise wrap(exc, "stage: copy") from exc
    middle = len(records) // 2
    return (_copy_records(conn, statement, records[:middle], options)
            + _copy_records(conn, statement, records[middle:], options))
