"""A PostgreSQL table as a stream of CSV windows: change data capture by watermark.

The rows changed since the last committed watermark (minus `lookback`) leave the source
through `COPY (SELECT ... ORDER BY change time) TO STDOUT (FORMAT csv)`, read in one
REPEATABLE READ, READ ONLY transaction under a statement_timeout. The copy-out chunks are
fed, as bytes, to the same record-aligned window machinery as a CSV file (`ByteWindows`):
Python never parses a row. Two computed fields ride along with the spec's: the row's change
time (the run's new watermark is their maximum, taken in SQL from the staging tables) and
its `deleted_at` (soft deletes, applied by the merge).

The extraction is one pseudo-file of the run, `postgres:schema.table`. It is never
fingerprinted: each attempt gets a fresh token as its "sha256", so a resumed run re-extracts
from the same watermark instead of seeking to a row index that may have moved.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import copy as db_copy
from pgstage.db import execute, mask, wrap
from pgstage.errors import DatabaseError, Location, SourceError, SpecError
from pgstage.names import SOURCE_CHANGED_AT, SOURCE_DELETED_AT
from pgstage.pipeline.extract.csv import ByteWindows, Header
from pgstage.pipeline.extract.digest import Digest
from pgstage.pipeline.extract.files import SourceFile
from pgstage.spec import SourceSection

_TIME_TYPES = ("timestamp with time zone", "timestamp without time zone", "date")


def pseudo_name(source: SourceSection) -> str:
    schema, table = source.table_name()
    return f"postgres:{schema}.{table}"


def pseudo_file(source: SourceSection) -> SourceFile:
    """The run's one "file": the table, with a token that differs on every attempt (never skipped)."""
    return SourceFile(path=Path(pseudo_name(source)), size=0, digest=Digest.known(f"extract:{uuid.uuid4().hex}"))


def change_time(source: SourceSection) -> sql.Composable:
    """greatest(inserted_at, updated_at, deleted_at) as timestamptz; greatest ignores NULLs."""
    names = [n for n in (source.inserted_at, source.updated_at, source.deleted_at) if n]
    return sql.SQL("greatest({})").format(sql.SQL(", ").join(sql.SQL("{}::timestamptz").format(sql.Identifier(n))
                                                             for n in names))


def build_copy_out(source: SourceSection, fields: Sequence[str], since: datetime | None) -> sql.Composed:
    """The COPY TO of the changed rows (pure). `since` is the committed watermark, None on the first run.

    The lower bound is written as one comparison per column (`updated_at >= bound OR ...`),
    which equals `greatest(...) >= bound` and lets an index on each column serve it.
    """
    picks: list[sql.Composable] = [sql.Identifier(f) for f in fields]
    picks.append(change_time(source))
    if source.deleted_at:
        picks.append(sql.SQL("{}::timestamptz").format(sql.Identifier(source.deleted_at)))
    where: sql.Composable = sql.SQL("")
    if since is not None:
        bound = sql.SQL("({}::timestamptz - {}::interval)").format(sql.Literal(since), sql.Literal(source.lookback))
        names = [n for n in (source.inserted_at, source.updated_at, source.deleted_at) if n]
        where = sql.SQL(" WHERE {}").format(sql.SQL(" OR ").join(
            sql.SQL("{} >= {}").format(sql.Identifier(n), bound) for n in names))
    return sql.SQL("COPY (SELECT {} FROM {}{} ORDER BY {} NULLS FIRST) TO STDOUT (FORMAT csv)").format(
        sql.SQL(", ").join(picks), sql.Identifier(*source.table_name()), where, change_time(source))


class _CopyOut(io.RawIOBase):
    """A file-like view of a COPY TO's chunks, for ByteWindows to cut into windows."""

    def __init__(self, chunks: Iterator[Any]) -> None:
        self._chunks = chunks
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        size, filled = len(view), 0
        while filled < size:
            if not self._left:
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                self._left = bytes(chunk)
            n = min(size - filled, len(self._left))
            view[filled:filled + n] = self._left[:n]
            self._left = self._left[n:]
            filled += n
        return filled


class PostgresReader(ByteWindows):
    """Reads the changed rows of a source table as record-aligned CSV windows.

    Opening reads the table's columns (the "header") in the extraction's own snapshot; call
    `select` with the fields to stage, then read windows. Offsets count bytes of the copy-out.
    """

    def __init__(self, source: SourceSection, *, since: datetime | None = None, name: str | None = None) -> None:
        # ByteWindows.__init__ would open a file: its state is set here, and `_stream`, the
        # copy-out, opens on the first read (after `select`).
        self.source = source
        self.since = since
        self.label = name or pseudo_name(source)
        self.path = Path(self.label)
        self.member = None
        self.quote = b'"'
        self._pending = bytearray()
        self._offset = 0
        self._eof = False
        self.data_start = 0
        self._fields: tuple[str, ...] = ()
        url = source.url or ""
        try:
            self._conn: psycopg.Connection[Any] = psycopg.connect(url, application_name="pgstage-source")
        except psycopg.OperationalError as exc:
            where = mask(url) if url else "the PG* environment variables"
            raise SourceError(f"cannot connect to the source database ({where}): {str(exc).strip()}",
                              location=Location(file=self.label),
                              hint="check source.url, or PGHOST/PGDATABASE/PGUSER/PGPASSWORD when url is omitted") from None
        self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self._conn.read_only = True
        self._cursor: Any = None
        self._copy_cm: Any = None
        try:
            execute(self._conn, sql.SQL("SET TIME ZONE 'UTC'"), label="source: time zone")
            execute(self._conn, sql.SQL("SELECT set_config('statement_timeout', %s, true)"),
                    (source.statement_timeout,), label="source: statement_timeout")
            self.header = self._read_header()
        except BaseException:
            self._conn.close()
            raise

    def _read_header(self) -> Header:
        schema, table = self.source.table_name()
        rows = execute(self._conn, sql.SQL(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"),
            (schema, table), label="source: columns").fetchall()
        if not rows:
            raise SpecError(f"source table {schema}.{table} does not exist in the source database",
                            location=Location(file=self.label),
                            hint="check source.table (schema.table) and source.url")
        types = {name: kind for name, kind in rows}
        problems = []
        for key in ("inserted_at", "updated_at", "deleted_at"):
            column = getattr(self.source, key)
            if column is None:
                continue
            if column not in types:
                problems.append(f"source.{key}: column {column!r} is missing from {schema}.{table}")
            elif types[column] not in _TIME_TYPES:
                problems.append(f"source.{key}: column {column!r} is {types[column]}, not a timestamp")
        try:
            execute(self._conn, sql.SQL("SELECT %s::interval"), (self.source.lookback,), label="source: lookback")
        except DatabaseError:
            self._conn.rollback()
            problems.append(f"source.lookback: {self.source.lookback!r} is not a PostgreSQL interval")
        if problems:
            raise SpecError(f"{self.label}: the source table does not fit the spec: " + "; ".join(problems),
                            problems=tuple(problems), location=Location(file=self.label),
                            hint="name timestamp columns of the source table in inserted_at/updated_at/deleted_at,"
                                 " and give lookback as an interval such as \"5 minutes\"")
        return Header(tuple(types))

    def select(self, fields: Sequence[str]) -> tuple[str, ...]:
        """Choose the table's columns to stage; returns the staged fields, computed ones last."""
        self._fields = tuple(fields)
        return (*self._fields, SOURCE_CHANGED_AT, *((SOURCE_DELETED_AT,) if self.source.deleted_at else ()))

    def _start(self) -> None:
        statement = build_copy_out(self.source, self._fields, self.since)
        self._cursor = self._conn.cursor()
        try:
            # Kept referenced: a dropped context manager would end the COPY when collected.
            self._copy_cm = db_copy(self._cursor, statement, label=f"source: copy out {self.label}")
            copy = self._copy_cm.__enter__()
        except psycopg.Error as exc:
            raise wrap(exc, f"source: copy out {self.label}") from exc
        self._stream = _CopyOut(iter(copy))  # type: ignore[assignment]

    def _read(self, size: int) -> bytes:
        if self._cursor is None:
            self._start()
        try:
            return self._stream.read(size) or b""
        except psycopg.Error as exc:
            raise wrap(exc, f"source: copy out {self.label}") from exc

    @property
    def name(self) -> str:
        return self.label

    def close(self) -> None:
        """Closing the connection ends the read-only transaction (and a COPY left unfinished)."""
        self._conn.close()
