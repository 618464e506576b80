"""Rows known unchanged: a reload of the same bytes skips their validation.

Every row pgstage writes carries `_row_hash`, a 64-bit hash of the source record that produced
it, seeded with a fingerprint of everything that decides how a record becomes a row (the
columns' definitions, null strings, the session's DateStyle). When a staged record hashes to
the `_row_hash` of the target row with its key, validating it again would yield exactly that
row: it is valid and unchanged, and only its key and version are kept for the dedup.

Validation is the larger half of a load, and snapshot feeds resend mostly the same rows, so
a forced reload of unchanged data costs a hash join instead of a validation pass. The
shortcut is taken per batch when a sample of its first records says it pays (`sample`), and
never for specs whose rules look beyond the record (references, uniqueness, custom checks):
their verdict on the same bytes may change with other tables.

A target row changed behind pgstage's back keeps its `_row_hash`, so a reload of the bytes
that produced it reports it unchanged and leaves it be (SPEC §4: no write when the row hash is
unchanged). A spec change changes the seed: every record is validated again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.pipeline import transform
from pgstage.names import KNOWN, LEDGER_SCHEMA, ROW_HASH
from pgstage.pipeline.stage import NO_AUTOVACUUM, StagedBatch
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

SAMPLE_RECORDS = 1000
MIN_SHARE = 0.25        # below this share of known records the hash join costs more than it saves


def eligible(spec: Spec) -> bool:
    """Whether the verdict on a record depends on nothing but its bytes and the spec."""
    looks_beyond = (spec.references or spec.checks
                    or any(c.references or c.unique for c in spec.columns.values()))
    # replace_partition rewrites every row of its partition, scd2 compares with the current version, not
    # with the row the record once produced: both need each record's values, known or not.
    rewrites = spec.pipeline.strategy in ("replace_partition", "scd2", "append")
    return not looks_beyond and not rewrites and spec.source.kind in ("csv", "jsonl", "parquet")


def seed(spec: Spec, datestyle: str) -> int:
    """The hash seed: a fingerprint of what turns a record into a row, as a signed 64-bit int."""
    facts = {
        "columns": {n: c.model_dump(mode="json", by_alias=True) for n, c in spec.columns.items()},
        "null": list(spec.source.null), "raw_column": spec.load.raw_column, "kind": spec.source.kind,
        "datestyle": datestyle, "version": 1,
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def hashed_fields(spec: Spec, staged: StagedBatch) -> list[sql.Composable]:
    """The staged values a record's hash covers: the fields the spec reads (all, with raw_column)."""
    if staged.kind == "jsonl":
        return [sql.Identifier("doc")]
    if spec.load.raw_column:
        return [sql.Identifier(f"f{i + 1}") for i in range(len(staged.header.fields))]
    return [staged.column(name) for name in spec.source_fields()]


def row_hash(spec: Spec, staged: StagedBatch, alias: str, seed_value: int) -> sql.Composable:
    """`_row_hash` of a staged record: the fields hashed as one record (NULL and '' differ)."""
    fields = [sql.SQL("{}.{}").format(sql.Identifier(alias), f) if isinstance(f, sql.Identifier) else f
              for f in hashed_fields(spec, staged)]
    return sql.SQL("hash_record_extended(ROW({}), {})").format(sql.SQL(", ").join(fields), sql.Literal(seed_value))


def _typed_keys(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch,
                collation: str | None) -> list[sql.Composable]:
    """A staged record's key values typed as the target's, as `_k0`, `_k1`, …"""
    return [sql.SQL("{} AS {}").format(
        transform.typed(staged.column(spec.columns[k].from_ or "") if spec.columns[k].from_ else sql.SQL("NULL"),
                        spec.columns[k], types[k], spec.source.null, collation), sql.Identifier(f"_k{i}"))
        for i, k in enumerate(spec.pipeline.key)]


def _matches(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, seed_value: int,
             collation: str | None, source: sql.Composable, join: str) -> sql.Composed:
    """Staged records (from `source`) joined to the target rows they would reproduce."""
    keys = spec.pipeline.key
    typed = _typed_keys(spec, types, staged, collation)
    on = sql.SQL(" AND ").join([*(sql.SQL("t.{} = s.{}").format(sql.Identifier(k), sql.Identifier(f"_k{i}"))
                                  for i, k in enumerate(keys)),
                                sql.SQL("t._row_hash = s._h")])
    return sql.SQL("(SELECT s._rec, {h} AS _h, {typed} FROM {source} s) s {join} {target} t ON {on}").format(
        h=row_hash(spec, staged, "s", seed_value), typed=sql.SQL(", ").join(typed), source=source,
        join=sql.SQL(join), target=sql.Identifier(*spec.target), on=on)


def key_probe(spec: Spec, values: list[sql.Composable], *also: sql.Composable) -> sql.Composed:
    """The target row whose key is `values` (one per key column) and that meets `also`: one index probe.

    For the samples that decide a batch's path (`build_sample`, and the merge's writes sample):
    a thousand keys at most, which the key's unique index answers in about a millisecond
    whatever the target's size. Written as a plain join, the planner hashes the whole target
    instead while it guesses a scan of it cheaper than a thousand probes (up to ~150,000 rows:
    a backfill's first month), and the sample reads every row: 120 ms at 75,000 rows against
    1 ms. As a LATERAL subquery with LIMIT, which PostgreSQL cannot flatten into a join, each
    sampled record is one probe.
    """
    on = sql.SQL(" AND ").join([*(sql.SQL("t.{} = {}").format(sql.Identifier(k), v)
                                  for k, v in zip(spec.pipeline.key, values, strict=True)), *also])
    return sql.SQL("SELECT * FROM {} t WHERE {} LIMIT 1").format(sql.Identifier(*spec.target), on)


def build_sample(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, seed_value: int,
                 collation: str | None) -> sql.Composed:
    """(known, sampled) over the batch's first records in storage order: does the shortcut pay?"""
    keys = spec.pipeline.key
    typed = _typed_keys(spec, types, staged, collation)
    probe = key_probe(spec, [sql.SQL("s.{}").format(sql.Identifier(f"_k{i}")) for i in range(len(keys))],
                      sql.SQL("t._row_hash = s._h"))
    return sql.SQL("SELECT count(t.{key}), count(*) FROM (SELECT {h} AS _h, {typed} FROM {staged} s LIMIT {n}) s"
                   " LEFT JOIN LATERAL ({probe}) t ON true").format(
        key=sql.Identifier(keys[0]), h=row_hash(spec, staged, "s", seed_value), typed=sql.SQL(", ").join(typed),
        staged=staged.ident, n=sql.Literal(SAMPLE_RECORDS), probe=probe)


def build_known(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, table: str, seed_value: int,
                collation: str | None) -> sql.Composed:
    """CREATE the table of the batch's known records: their number, key and version (the target's)."""
    cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in kept_columns(spec))
    return sql.SQL("CREATE UNLOGGED TABLE {}" + NO_AUTOVACUUM + " AS SELECT s._rec, {} FROM {}").format(
        sql.Identifier(LEDGER_SCHEMA, table), cols,
        _matches(spec, types, staged, seed_value, collation, staged.ident, "JOIN"))


def version_column(spec: Spec) -> list[str]:
    """The version column the dedup ranks by, when it is not a key column or a constant."""
    version = spec.pipeline.version
    if version and version not in spec.pipeline.key and spec.columns[version].const is None:
        return [version]
    return []


def kept_columns(spec: Spec) -> list[str]:
    """What the checked table keeps of a known record, beside its number: key and version.

    Its other columns stay NULL: a known row that wins the dedup is unchanged (the merge
    writes nothing for it), one that loses is a duplicate, so those values are never read.
    """
    return [c for c in (*spec.pipeline.key, *version_column(spec)) if spec.columns[c].const is None]


def session_seed(conn: psycopg.Connection[Any], spec: Spec) -> int:
    """The seed for this run's connection (DateStyle decides how `01/02/2024` reads)."""
    row = execute(conn, sql.SQL("SHOW DateStyle"), label="known: datestyle").fetchone()
    return seed(spec, str(row[0]) if row else "")


def worth_it(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], staged: StagedBatch,
             seed_value: int, collation: str | None) -> bool:
    row: Any = execute(conn, build_sample(spec, types, staged, seed_value, collation),
                       label="validate: known sample").fetchone()
    known, sampled = row if row else (0, 0)
    return bool(sampled) and known >= MIN_SHARE * sampled
