"""Reading a run's rejects back, and exporting them as a file the same spec can load once fixed.

`pgstage.rejects.raw` is JSONB, which keeps no key order, so the source's field order comes
from the source file's own header, read again with the run's spec (delimiter, quote,
encoding) while the file is still there; otherwise the keys are sorted. Nothing new is
stored for this.

The CSV export is an ordinary source for the run's spec: the source's fields in their
order (empty for a record COPY could not read), then `_file`, `_record`, `_reasons` and
`_raw` (the unreadable record's text), which a spec ignores because it does not use them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql

from pgstage.db import connect, execute, resolve_url
from pgstage.errors import PgstageError, UsageError
from pgstage.pipeline import ledger
from pgstage.pipeline.extract import CsvReader
from pgstage.pipeline.stage import raw_names
from pgstage.spec import SourceSection, load_spec

ExportFormat = Literal["csv", "jsonl"]
EXTRA_FIELDS = ("_file", "_record", "_reasons", "_raw")
PARSE_KEY = "_record"      # the key of a `parse` reject's raw text in pgstage.rejects.raw
_FORMATS: dict[str, ExportFormat] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Reason:
    """Why a record was rejected: `column.rule` (just `parse` for an unreadable record) and a message."""

    column: str | None
    rule: str
    message: str

    @property
    def name(self) -> str:
        return f"{self.column}.{self.rule}" if self.column else self.rule

    def __str__(self) -> str:
        return f"{self.name}: {self.message}"


@dataclass(frozen=True)
class RejectRow:
    """One rejected record: its file, its record number (1 = first data record), every reason, its raw fields."""

    file: str
    record: int
    reasons: tuple[Reason, ...]
    raw: dict[str, str | None]          # by header name, in the source's field order where known

    @property
    def unreadable(self) -> bool:
        """COPY could not read the record: `raw` holds its text under `_record`, no fields."""
        return any(r.rule == "parse" for r in self.reasons) and set(self.raw) == {PARSE_KEY}

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "record": self.record,
                "reasons": [{"column": r.column, "rule": r.rule, "message": r.message} for r in self.reasons],
                "raw": dict(self.raw)}


def list_rejects(run_id: int, *, db: str | None = None, rule: str | None = None,
                 limit: int | None = None) -> list[RejectRow]:
    """A run's rejects by file and record; `rule` keeps those failing `column.rule`, a bare rule (`min`) or `parse`."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        run = _run(conn, run_id)
        rows = _fetch(conn, run_id, rule, limit)
        fields, _ = _source_fields(run, rows)
        return [_ordered(row, fields.get(row.file)) for row in rows]


def reject_rules(run_id: int, *, db: str | None = None) -> dict[str, int]:
    """Rejected records per `column.rule` in a run, to say what a `--rule` filter could have been."""
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        _run(conn, run_id)
        return ledger.rejects_by_rule(conn, run_id)


def export_rejects(run_id: int, path: Path, *, db: str | None = None, rule: str | None = None,
                   format: ExportFormat | None = None, limit: int | None = None) -> int:
    """Write a run's rejects to `path` (CSV loadable by the run's spec, or JSON Lines); returns how many."""
    path = Path(path)
    kind = format or _FORMATS.get(path.suffix.lower())
    if kind not in ("csv", "jsonl"):
        raise UsageError(f"cannot tell the export format of {path}",
                         hint="name the file *.csv or *.jsonl, or pass the format explicitly")
    with connect(resolve_url(db)) as conn:
        ledger.ensure(conn)
        run = _run(conn, run_id)
        rows = _fetch(conn, run_id, rule, limit)
        fields, options = _source_fields(run, rows)
    try:
        if kind == "jsonl":
            _write_jsonl(path, [_ordered(row, fields.get(row.file)) for row in rows])
        else:
            _write_csv(path, rows, fields, options)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}", hint="choose a writable --export path") from None
    return len(rows)


# --- the ledger ------------------------------------------------------------------------------


def _run(conn: psycopg.Connection[Any], run_id: int) -> dict[str, Any]:
    run = ledger.get_run(conn, run_id)
    if run is None:
        raise UsageError(f"there is no run {run_id} in this database", hint="`pgstage runs` lists the runs")
    return run


_SELECT = sql.SQL(
    "SELECT file, record, reasons, raw FROM pgstage.rejects WHERE run_id = %(run)s"
    " AND (%(rule)s::text IS NULL OR EXISTS (SELECT 1 FROM jsonb_array_elements(reasons) r"
    "   WHERE concat_ws('.', r->>'column', r->>'rule') = %(rule)s OR r->>'rule' = %(rule)s))"
    " ORDER BY file, record LIMIT %(limit)s")


def _fetch(conn: psycopg.Connection[Any], run_id: int, rule: str | None, limit: int | None) -> list[RejectRow]:
    if limit is not None and limit < 0:
        raise UsageError(f"--limit must be 0 or more, got {limit}")
    found = execute(conn, _SELECT, {"run": run_id, "rule": rule, "limit": limit}, label="rejects: list").fetchall()
    return [RejectRow(file, int(record),
                      tuple(Reason(r.get("column"), str(r.get("rule")), str(r.get("message"))) for r in reasons),
                      dict(raw)) for file, record, reasons, raw in found]


# --- the source's own field order --------------------------------------------------------------


def _source_fields(run: dict[str, Any], rows: list[RejectRow]) -> tuple[dict[str, list[tuple[str, str]]], SourceSection]:
    """Per file, its fields as (header name, raw key) in file order; and the source options to write with.

    A header is trusted only if it names every raw key of that file's rejects (the file may have
    changed since the run); otherwise the keys are sorted.
    """
    options = _spec_source(run.get("spec_path"))
    files = list(dict.fromkeys([r.file for r in rows] + [str(f.get("path")) for f in run.get("files") or []]))
    layout: dict[str, list[tuple[str, str]]] = {}
    for file in files:
        keys = {k for r in rows if r.file == file and not r.unreadable for k in r.raw}
        header = _header(Path(file), options) if options is not None else None
        if header is not None and keys <= {key for _, key in header}:
            layout[file] = header
        elif keys:
            layout[file] = [(k, k) for k in sorted(keys, key=_position_order)]
    return layout, options or SourceSection(path="-")


def _position_order(key: str) -> tuple[int, str]:
    """Headerless sources name fields "1".."N": sort them as numbers."""
    return (int(key), "") if key.isdigit() else (1 << 30, key)


def _spec_source(spec_path: str | None) -> SourceSection | None:
    if not spec_path:
        return None
    try:
        return load_spec(spec_path).source
    except PgstageError:
        return None


def _header(path: Path, options: SourceSection) -> list[tuple[str, str]] | None:
    """The CSV file's own field order; None (sorted keys) for other kinds or a file that is gone."""
    if options.kind != "csv" or not path.is_file():
        return None
    try:
        with CsvReader(path, options) as reader:
            fields = reader.header.fields
    except (PgstageError, OSError):
        return None
    return list(zip(fields, raw_names(fields)))


def _ordered(row: RejectRow, fields: list[tuple[str, str]] | None) -> RejectRow:
    """The row with its raw values in the source's field order (unknown keys after, sorted)."""
    if fields is None or row.unreadable:
        return row
    order = [key for _, key in fields if key in row.raw]
    order += sorted(k for k in row.raw if k not in set(order))
    return RejectRow(row.file, row.record, row.reasons, {k: row.raw[k] for k in order})


# --- writing ---------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: Iterable[RejectRow]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for row in rows:
            out.write(json.dumps(row.as_dict(), ensure_ascii=False) + "\n")


def _write_csv(path: Path, rows: list[RejectRow], layout: dict[str, list[tuple[str, str]]],
               options: SourceSection) -> None:
    """One header for all files: the union of their fields in first-seen order, then the extra fields."""
    columns: list[tuple[str, str]] = []
    for file in dict.fromkeys(r.file for r in rows) or layout:
        for name, key in layout.get(file, []):
            if key not in {k for _, k in columns}:
                columns.append((name, key))
    taken = {name for name, _ in columns}
    extras = []
    for extra in EXTRA_FIELDS:
        while extra in taken:       # the source has a field of that name: step aside, never shadow it
            extra = "_" + extra
        extras.append(extra)
        taken.add(extra)
    encoding = options.encoding
    with path.open("w", encoding=encoding, errors="backslashreplace", newline="") as out:
        writer = csv.writer(out, delimiter=options.delimiter, quotechar=options.quote, doublequote=True,
                            lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        if options.header:
            writer.writerow([name for name, _ in columns] + extras)
        for row in rows:
            reasons = "; ".join(str(r) for r in row.reasons)
            if row.unreadable:
                values = [""] * len(columns) + [row.file, str(row.record), reasons, row.raw.get(PARSE_KEY) or ""]
            else:
                values = [row.raw.get(key) or "" for _, key in columns] + [row.file, str(row.record), reasons, ""]
            writer.writerow(values)


__all__ = ["Reason", "RejectRow", "export_rejects", "list_rejects", "reject_rules"]
