"""Reconcile a PostgreSQL source with its target by key-range checksums, fetching rows only where they differ.

Both sides compute, per row, a 32-bit hash of the key's text (which range the row is in)
and a 64-bit hash of the compared columns' text, each cast to the target's type in the
source so that both spell values alike. A range is a set of key hashes sharing their low
bits: the first pass groups every row into about rows/256 ranges and compares (count,
bit_xor of row hashes) per range; a range that differs and is still large is split 16 ways
on the next 4 bits (bisection, 16-ary), only where it differs; a range of at most
`LEAF_ROWS` rows on both sides has its keys and rows fetched and compared one by one. An
untouched 1,000,000-row table costs one aggregate per side and fetches nothing. Hash ranges
spread any key (composite, text, uuid) evenly, where ranges of key values would not.

Left out on both sides: source rows changed after the last committed watermark (reported as
in flight: the next run loads them), and soft-deleted rows (`deleted_at` in the source,
`_deleted_at` in a target that marks them). Compared: columns taken straight from a source
field (`from`, with no normalize / map / format / time zone / zero_is_null, not money_cents);
the others are named in the result's notes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from pgstage import target
from pgstage.db import connect, execute, mask
from pgstage.errors import UsageError
from pgstage.names import DELETED_AT
from pgstage.ops import logs
from pgstage.pipeline import ledger, merge, transform
from pgstage.pipeline.extract import postgres
from pgstage.spec import MONEY_CENTS, ColumnSpec, Spec

LEAF_ROWS = 256     # a differing range this small (on both sides) is fetched
SPLIT_BITS = 4      # a larger differing range is split 16 ways
FIRST_BITS = 16     # the first pass has at most 65,536 ranges (a few MB of counts in Python)
MAX_BITS = 32
MAX_FETCHED_RANGES = 256   # at most this many ranges are fetched (~65,536 rows a side): memory stays bounded


def plain(column: ColumnSpec) -> bool:
    """A column whose target value is its source field cast to the target type: comparable in the source."""
    return (column.from_ is not None and column.const is None and column.type != MONEY_CENTS and not column.normalize
            and not column.map and column.format is None and column.timezone is None and not column.zero_is_null)


def _row_hash(exprs: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("('x' || substr(md5(ROW({}, 0)::text), 1, 16))::bit(64)::bigint").format(sql.SQL(", ").join(exprs))


def _key_hash(exprs: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("('x' || lpad(substr(md5(ROW({}, 0)::text), 1, 8), 16, '0'))::bit(64)::bigint").format(
        sql.SQL(", ").join(exprs))


def _json(names: Sequence[str], exprs: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL("jsonb_build_object({})").format(sql.SQL(", ").join(
        sql.SQL("{}, {}").format(sql.Literal(n), e) for n, e in zip(names, exprs)))


def build_side(spec: Spec, types: dict[str, transform.ColumnType], columns: list[str], *, source: bool,
               watermark: datetime | None, in_flight: bool = False) -> sql.Composed:
    """One side's rows as (kh, rh, key, row) (pure); the source's cast to the target's types.

    `in_flight` selects the source rows changed after the watermark instead of the others.
    """
    keys = list(spec.pipeline.key)
    if source:
        src = spec.source
        exprs: dict[str, sql.Composable] = {n: sql.SQL("CAST({} AS {})").format(sql.Identifier(spec.columns[n].from_ or n), types[n].cast)
                 for n in columns}
        relation: sql.Composable = sql.Identifier(*src.table_name())
        where: list[sql.Composable] = []
        if src.deleted_at and not in_flight:
            where.append(sql.SQL("{} IS NULL").format(sql.Identifier(src.deleted_at)))
        if watermark is not None:
            where.append(sql.SQL("{} {} {}").format(postgres.change_time(src),   # the literal is a timestamptz
                                                                 sql.SQL(">" if in_flight else "<="),
                                                                 sql.Literal(watermark)))
    else:
        exprs = {n: sql.Identifier(n) for n in columns}
        relation = target.ident(spec)
        where = [sql.SQL("{} IS NULL").format(sql.Identifier(DELETED_AT))] if merge.soft_deletes(spec) == "mark" else []
    key_exprs = [exprs[k] for k in keys]
    return sql.SQL("SELECT {kh} AS kh, {rh} AS rh, {key} AS key, {row} AS row FROM {rel}{where}").format(
        kh=_key_hash(key_exprs), rh=_row_hash([exprs[n] for n in columns]), key=_json(keys, key_exprs),
        row=_json(columns, [exprs[n] for n in columns]), rel=relation,
        where=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""))


def build_ranges(side: sql.Composable, bits: int, parent_bits: int) -> sql.Composed:
    """Count and checksum per range of `bits` low bits, within the differing parents (pure; params: parents)."""
    return sql.SQL("SELECT kh & {mask} AS r, count(*), bit_xor(rh) FROM ({side}) x"
                   " WHERE {parent_bits} = 0 OR kh & {parent_mask} = ANY(%(parents)s::bigint[]) GROUP BY 1").format(
        mask=sql.Literal((1 << bits) - 1), side=side, parent_bits=sql.Literal(parent_bits),
        parent_mask=sql.Literal((1 << parent_bits) - 1))


def build_fetch(side: sql.Composable, bits: int) -> sql.Composed:
    """The rows of some ranges (pure; params: ranges)."""
    return sql.SQL("SELECT key, row, rh FROM ({}) x WHERE kh & {} = ANY(%(ranges)s::bigint[])").format(
        side, sql.Literal((1 << bits) - 1))


class _Sides:
    """The source session (one repeatable-read snapshot) and the target session, and what was fetched."""

    def __init__(self, src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], source: sql.Composed,
                 target_side: sql.Composed, in_flight: sql.Composed | None) -> None:
        self.src, self.tgt, self.source, self.target, self.in_flight = src, tgt, source, target_side, in_flight
        self.fetched = 0
        self.ranges = 0
        self.fetched_ranges = 0

    def ranges_of(self, bits: int, parent_bits: int, parents: list[int]) -> tuple[dict[int, tuple[int, int]], ...]:
        found = []
        for conn, side in ((self.src, self.source), (self.tgt, self.target)):
            rows = execute(conn, build_ranges(side, bits, parent_bits), {"parents": parents},
                           label="reconcile: ranges").fetchall()
            found.append({int(r): (int(n), int(x)) for r, n, x in rows})
        self.ranges += len(set(found[0]) | set(found[1]))
        return found[0], found[1]

    def fetch(self, bits: int, ranges: list[int]) -> tuple[dict[str, tuple[Any, Any, int]], ...]:
        self.fetched_ranges += len(ranges)
        found = []
        for conn, side in ((self.src, self.source), (self.tgt, self.target)):
            rows = execute(conn, build_fetch(side, bits), {"ranges": ranges}, label="reconcile: fetch").fetchall()
            self.fetched += len(rows)
            found.append({_text(k): (k, row, int(rh)) for k, row, rh in rows})
        return found[0], found[1]

    def flying(self, bits: int, ranges: list[int]) -> set[str]:
        if self.in_flight is None:
            return set()
        rows = execute(self.src, build_fetch(self.in_flight, bits), {"ranges": ranges},
                       label="reconcile: in flight").fetchall()
        self.fetched += len(rows)
        return {_text(k) for k, _, _ in rows}


def _text(key: Any) -> str:
    import json

    return json.dumps(key, sort_keys=True)


def compare(conn: psycopg.Connection[Any], spec: Spec, partition: str | None) -> Any:
    """Reconcile a postgres source with the target (`conn`); returns a ReconcileResult."""
    from pgstage.ops.reconcile import SAMPLES, Finding, ReconcileResult

    columns = [n for n, c in spec.columns.items() if plain(c)]
    skipped = [n for n in spec.columns if n not in columns]
    unplain = [k for k in spec.pipeline.key if k not in columns]
    if unplain:
        raise UsageError(f"key column(s) {', '.join(unplain)} are not taken straight from a source field,"
                         " so the source cannot compute them: this pipeline cannot be reconciled by checksums",
                         hint="reconcile compares key columns given as `from` with no normalize, map or format")
    types = transform.resolve_types(conn, spec)
    source = spec.source
    logs.secret(source.url)
    watermark = ledger.watermark(conn, spec.pipeline.name, postgres.pseudo_name(source))
    total = _count(conn, sql.SQL("SELECT count(*) FROM {}").format(target.ident(spec)))
    with connect(source.url or "") as src, src.transaction():
        execute(src, sql.SQL("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"), label="reconcile: snapshot")
        execute(src, sql.SQL("SELECT set_config('statement_timeout', %s, true)"), (source.statement_timeout,),
                label="reconcile: timeout")
        in_flight_side = (build_side(spec, types, columns, source=True, watermark=watermark, in_flight=True)
                          if watermark is not None else None)
        sides = _Sides(src, conn, build_side(spec, types, columns, source=True, watermark=watermark),
                       build_side(spec, types, columns, source=False, watermark=watermark), in_flight_side)
        flying = (_count(src, sql.SQL("SELECT count(*) FROM ({}) x").format(in_flight_side))
                  if in_flight_side is not None else 0)
        missing: list[Any] = []
        extra: list[Any] = []
        different: list[tuple[Any, list[str]]] = []
        # sized by the larger side: an emptied target must not make the first pass coarse
        size = max(total, _count(src, sql.SQL("SELECT count(*) FROM ({}) x").format(sides.source)))
        bits = min(FIRST_BITS, max(SPLIT_BITS, math.ceil(math.log2(size / LEAF_ROWS)) if size > LEAF_ROWS else 0))
        unfetched = [0, 0]   # differing ranges left unfetched once MAX_FETCHED_RANGES were, and their rows
        parent_bits, parents = 0, [0]
        source_rows = 0
        while parents:
            here, there = sides.ranges_of(bits, parent_bits, parents)
            if parent_bits == 0:
                source_rows = sum(n for n, _ in here.values())
            differing = [r for r in set(here) | set(there) if here.get(r) != there.get(r)]
            small = [r for r in differing if max(here.get(r, (0, 0))[0], there.get(r, (0, 0))[0]) <= LEAF_ROWS
                     or bits >= MAX_BITS]
            room = MAX_FETCHED_RANGES - sides.fetched_ranges
            if small[room:]:   # a target far from its source: count what is left, fetch no more
                unfetched[0] += len(small[room:])
                unfetched[1] += sum(max(here.get(r, (0, 0))[0], there.get(r, (0, 0))[0]) for r in small[room:])
            if small[:room]:
                _leaves(sides, bits, small[:room], missing, extra, different)
            parents = [r for r in differing if r not in small]
            parent_bits, bits = bits, min(MAX_BITS, bits + SPLIT_BITS)
    note: tuple[str, ...] = ()
    if unfetched[0]:
        note += (f"{unfetched[0]:,} more differing key ranges (up to {unfetched[1]:,} rows) were not fetched:"
                 " the counts are a lower bound",)
    if watermark is None:
        note += (f"no watermark yet for {postgres.pseudo_name(source)}: nothing was loaded from the source",)
    columns_count: dict[str, int] = {}
    for _, cols in different:
        for c in cols:
            columns_count[c] = columns_count.get(c, 0) + 1
    return ReconcileResult(
        spec.pipeline.name, partition, spec.pipeline.target, "checksums", source_rows, total,
        missing=Finding(len(missing), tuple({"key": k} for k in sorted(missing, key=_text)[:SAMPLES])),
        different=Finding(len(different), tuple({"key": k, "columns": c}
                                                for k, c in sorted(different, key=lambda d: _text(d[0]))[:SAMPLES]),
                          dict(sorted(columns_count.items()))),
        extra=Finding(len(extra), tuple({"key": k} for k in sorted(extra, key=_text)[:SAMPLES])),
        in_flight=flying, fetched=sides.fetched, ranges=sides.ranges,
        notes=(*note, *((f"not compared (transformed on load): {', '.join(skipped)}",) if skipped else ()),
               f"source {mask(source.url or '')} {'.'.join(source.table_name())}"))


def _leaves(sides: _Sides, bits: int, ranges: list[int], missing: list[Any], extra: list[Any],
            different: list[tuple[Any, list[str]]]) -> None:
    """Compare the rows of small differing ranges one by one (bounded: at most LEAF_ROWS a range and side)."""
    here, there = sides.fetch(bits, ranges)
    flying = sides.flying(bits, ranges)
    for key, (k, row, rh) in here.items():
        if key not in there:
            missing.append(k)
        elif there[key][2] != rh:
            other = there[key][1]
            different.append((k, sorted(c for c in row if row.get(c) != other.get(c))))
    extra += [k for key, (k, _, _) in there.items() if key not in here and key not in flying]


def _count(conn: psycopg.Connection[Any], query: sql.Composed) -> int:
    row = execute(conn, query, label="reconcile: count").fetchone()
    return int(row[0]) if row else 0
