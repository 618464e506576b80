"""Stage: COPY each file into an UNLOGGED, unindexed, all-text table with record numbers.

Happy path: record-aligned byte windows go to COPY untouched; the record number comes from
a sequence reset at each window's first record. A window COPY refuses is isolated by
`_quarantine` and only its broken records are kept aside; the rest of it still loads.
"""

from __future__ import annotations

import codecs
import difflib
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute, wrap
from pgstage.errors import HeaderMismatch, Location
from pgstage.pipeline._quarantine import Quarantined, isolate, to_csv
from pgstage.pipeline.extract import CsvReader, Header, SourceFile
from pgstage.spec import Spec

LEDGER_SCHEMA = "pgstage"

# Python codec name -> PostgreSQL client encoding name, for COPY's ENCODING option.
_PG_ENCODINGS = {
    "utf-8": "UTF8", "iso8859-1": "LATIN1", "cp1252": "WIN1252", "iso8859-15": "LATIN9",
    "cp1251": "WIN1251", "cp1250": "WIN1250", "ascii": "SQL_ASCII", "shift_jis": "SJIS",
    "euc_jp": "EUC_JP", "gbk": "GBK", "big5": "BIG5", "koi8-r": "KOI8R", "iso8859-2": "LATIN2",
}


def pg_encoding(name: str) -> str:
    python_name = codecs.lookup(name).name
    return _PG_ENCODINGS.get(python_name, python_name.upper().replace("-", ""))


@dataclass
class StagedFile:
    """A file in its staging table: how many records it had and which ones COPY refused."""

    source: SourceFile
    table: str
    header: Header
    field_of: dict[str, int]                  # source field name -> staging column position
    read: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    ignored_fields: tuple[str, ...] = ()

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(LEDGER_SCHEMA, self.table)

    def column(self, source_field: str) -> sql.Identifier:
        return sql.Identifier(f"f{self.field_of[source_field] + 1}")


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
            location=Location(file=file, record=0),
            hint=(f"fields in the file that the spec does not use: {', '.join(map(repr, unused))}" if unused
                  else "fix the columns' `from` names in the spec or the file's header"))
    ignored = tuple(f for f in header.fields if f not in positions)
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


def stage_file(conn: psycopg.Connection[Any], spec: Spec, source: SourceFile, table: str) -> StagedFile:
    """COPY one file into a new staging table; returns what was read and what was quarantined."""
    options = spec.source
    with CsvReader(source.path, options) as reader:
        field_of, ignored = match_header(spec, reader.header, source.name)
        staged = StagedFile(source, table, reader.header, field_of, ignored_fields=ignored)
        n_fields = len(reader.header.fields)
        _create(conn, table, n_fields)
        names = sql.SQL(", ").join(sql.Identifier(f"f{i + 1}") for i in range(n_fields))
        copy_raw = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, DELIMITER {}, QUOTE {}, ENCODING {})").format(
            staged.ident, names, sql.Literal(options.delimiter), sql.Literal(options.quote),
            sql.Literal(pg_encoding(options.encoding)))
        copy_numbered = sql.SQL("COPY {} (_rec, {}) FROM STDIN (FORMAT csv, ENCODING 'UTF8')").format(staged.ident, names)
        seq = f"{LEDGER_SCHEMA}.{table}_rec"
        record = 1
        for window in reader.windows():
            execute(conn, sql.SQL("SELECT setval({}, {}, false)").format(sql.Literal(seq), sql.Literal(record)),
                    label="stage: number")
            try:
                loaded = _copy(conn, copy_raw, window)
            except psycopg.errors.DataError:
                found = isolate(window, first_record=record, n_fields=n_fields, encoding=options.encoding,
                                delimiter=options.delimiter, quote=options.quote)
                refused = _copy_rows(conn, copy_numbered, found.good_rows)
                staged.quarantined.extend(sorted([*found.bad, *refused], key=lambda q: q.record))
                loaded = len(found.good_rows) + len(found.bad)
            except psycopg.Error as exc:
                raise wrap(exc, f"stage: copy {source.name}") from exc
            record += loaded
        staged.read = record - 1
    return staged


def _copy(conn: psycopg.Connection[Any], statement: sql.Composed, data: bytes) -> int:
    with conn.cursor() as cursor:
        with cursor.copy(statement) as copy:
            copy.write(data)
        return cursor.rowcount


def _copy_rows(conn: psycopg.Connection[Any], statement: sql.Composed, rows: list[list[str]]) -> list[Quarantined]:
    """COPY rows the csv module accepted; should PostgreSQL still refuse some, bisect down to them."""
    if not rows:
        return []
    try:
        _copy(conn, statement, to_csv(rows))
        return []
    except psycopg.errors.DataError as exc:
        if len(rows) == 1:
            reason = exc.diag.message_primary or str(exc)
            return [Quarantined(int(rows[0][0]), ",".join(rows[0][1:]), reason)]
    except psycopg.Error as exc:
        raise wrap(exc, "stage: copy") from exc
    middle = len(rows) // 2
    return _copy_rows(conn, statement, rows[:middle]) + _copy_rows(conn, statement, rows[middle:])
