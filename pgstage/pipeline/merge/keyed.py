"""The keyed strategies (insert_only, upsert, upsert_if_newer): dedup a batch's valid rows on the
key, classify them against the target, write.

One statement per batch. Rows are classified before anything is written (insert / update /
unchanged / stale), so unchanged rows cost no write, no lock and no WAL — unlike
`ON CONFLICT ... WHERE false`, which still locks every conflicting row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage.db import execute, qualified
from pgstage.errors import UNIQUE_VIOLATION, DatabaseError, TransientDatabaseError
from pgstage.pipeline import transform
from pgstage.pipeline.merge import surrogate
from pgstage.pipeline.transform import ColumnType
from pgstage.names import DELETED_AT, KNOWN, LEDGER_SCHEMA, NO_AUTOVACUUM, ROW_HASH, SOURCE_DELETED_AT
from pgstage.spec import Spec

if TYPE_CHECKING:   # the strategies read checked batches; importing validation (and staging) is the run's business
    from pgstage.pipeline.validate import Checked


# A merge chunk's first and last record numbers (file-wide, as `_rec`), both included.
Records = tuple[int, int]


@dataclass(frozen=True)
class MergeCounts:
    distinct: int
    inserted: int
    updated: int
    unchanged: int
    stale: int
    deleted: int = 0


def soft_deletes(spec: Spec) -> str | None:
    """How source deletions are applied: "mark", "delete", or None when the source reports none.

    Counting (SPEC §5 stays exact): a deletion is a change of an existing row, so a mark or a
    DELETE counts as `updated` (a mark of a new row as `inserted`), a deletion of a row the
    target lacks (or already marked alike) as `unchanged`; `deleted` counts them beside.
    """
    if spec.source.kind == "postgres" and spec.source.deleted_at:
        return spec.source.on_delete
    return None


def _written_columns(spec: Spec, checked: Checked) -> list[str]:
    """The target columns a merge writes: the spec's, the raw record, `_deleted_at` when marking, a hash surrogate
    key, the row hash."""
    hashed_id = surrogate.computed(spec)
    return [*_compared_columns(spec), *([hashed_id] if hashed_id else []), *([ROW_HASH] if checked.hashed else [])]


def _fixed(spec: Spec) -> set[str]:
    """Columns an update never sets: the key, and the surrogate key that stands for it."""
    hashed_id = surrogate.computed(spec)
    return {*spec.pipeline.key, *([hashed_id] if hashed_id else [])}


def _compared_columns(spec: Spec) -> list[str]:
    """The target columns whose equality makes a row unchanged (not the row hash: it is a hint)."""
    return [*target_columns(spec), *([DELETED_AT] if soft_deletes(spec) == "mark" else [])]


def _deleted_count(spec: Spec) -> sql.Composable:
    """`, <how many rows of cls this batch deletes or newly marks deleted>`, nothing without soft deletes."""
    mode = soft_deletes(spec)
    if mode == "delete":
        return sql.SQL(", count(*) FILTER (WHERE _act = 'd')")
    if mode == "mark":
        return sql.SQL(", count(*) FILTER (WHERE _act IN ('i', 'w') AND _deleted_at IS NOT NULL AND NOT _was_deleted)")
    return sql.SQL("")  # MergeCounts.deleted defaults to 0


def target_columns(spec: Spec) -> list[str]:
    """The target columns a merge writes: the spec's, and the raw record's if kept."""
    return [*spec.columns, *([spec.load.raw_column] if spec.load.raw_column else [])]


def _stale_condition(spec: Spec, t: str = "t", s: str = "s") -> sql.Composable | None:
    """When an existing row `t` must not be overwritten although the incoming `s` differs."""
    strategy = spec.pipeline.strategy
    if strategy == "insert_only":
        return sql.SQL("true")  # the target's row always wins
    if strategy == "upsert_if_newer":
        version = sql.Identifier(spec.pipeline.version or "")
        return sql.SQL("{s}.{v} IS NULL OR ({t}.{v} IS NOT NULL AND {s}.{v} <= {t}.{v})").format(
            v=version, s=sql.Identifier(s), t=sql.Identifier(t))
    return None


def _same(spec: Spec, t: str = "t", s: str = "s") -> sql.Composable:
    """Every compared column of the incoming row `s` equals the target row `t`'s, NULLs included.

    Comparing the typed values directly is exact (no hash collisions) and far cheaper than
    hashing each row's text.
    """
    non_key = [sql.Identifier(n) for n in _compared_columns(spec) if n not in spec.pipeline.key]
    if not non_key:
        return sql.SQL("true")
    return sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(t), c) for c in non_key),
        sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(s), c) for c in non_key))


def _overwrites(spec: Spec, t: str = "t", s: str = "s") -> sql.Composable:
    """The incoming row `s` is written over the existing `t`: they differ, and by the strategy `s` wins."""
    stale = _stale_condition(spec, t, s)
    same = _same(spec, t, s)
    if stale is None:
        return sql.SQL("NOT ({})").format(same)
    return sql.SQL("NOT ({}) AND NOT ({})").format(same, stale)


def _rank_order(spec: Spec, *tiebreak: sql.Composable) -> list[sql.Composable]:
    """Which row of a key wins: the greatest version (NULL loses), then the latest position."""
    order: list[sql.Composable] = []
    version = spec.pipeline.version
    if version and spec.columns[version].const is None:  # a const version ranks nothing
        order.append(sql.SQL("{} DESC NULLS LAST").format(sql.Identifier(version)))
    order += [sql.SQL("{} DESC").format(t) for t in tiebreak]
    return order


def build_beaten(spec: Spec, checked: list[Checked], table: str) -> sql.Composed:
    """CREATE a table of the valid rows that lose to another row of the run with the same key.

    Each batch is deduplicated on its own by DISTINCT ON; this makes the dedup hold across
    the batches and files of a run, so a key repeated in a later batch is a duplicate, not an
    update of a row merged a moment earlier.
    """
    keys = [sql.Identifier(k) for k in spec.pipeline.key if spec.columns[k].const is None]
    picked = [*keys]
    version = spec.pipeline.version
    if version and spec.columns[version].const is None and version not in spec.pipeline.key:
        picked.append(sql.Identifier(version))
    union = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS _file, {} AS _batch, _rec{} FROM {}").format(
            sql.Literal(c.staged.file_no), sql.Literal(c.staged.batch_no),
            sql.SQL("").join(sql.SQL(", {}").format(p) for p in picked), c.ident)
        for c in checked)
    partition = sql.SQL(", ").join(keys) if keys else sql.SQL("true")
    # Record numbers count from the start of each file, whatever its batches: (file, record) is
    # a record's identity across attempts, even if a resumed run cuts its batches elsewhere.
    order = sql.SQL(", ").join(_rank_order(spec, sql.Identifier("_file"), sql.Identifier("_rec")))
    return sql.SQL(
        "CREATE TABLE {}" + NO_AUTOVACUUM + " AS SELECT _file, _batch, _rec FROM ("
        " SELECT _file, _batch, _rec, row_number() OVER (PARTITION BY {} ORDER BY {}) AS _rank FROM ({}) u"
        ") r WHERE _rank > 1").format(sql.Identifier(LEDGER_SCHEMA, table), partition, order, union)


def find_beaten(conn: psycopg.Connection[Any], spec: Spec, checked: list[Checked], table: str) -> None:
    execute(conn, build_beaten(spec, checked, table), label="merge: cross-batch duplicates")


def build_overlap(spec: Spec, types: dict[str, ColumnType],
                  checked: list[Checked]) -> tuple[sql.Composed, list[str | None]] | None:
    """Whether two batches' ranges of the first varying key column overlap; None when it cannot tell.

    Batches whose ranges are disjoint share no key, so the run needs no cross-batch dedup.
    Exports usually list their rows in key or time order, so this holds for most large files,
    and its cost (min and max per batch) is a small part of the window sort it replaces.
    The ranges were found by validation (`Checked.key_range`): they are compared here, as
    parameters cast back to the key's type, so PostgreSQL orders them as it orders the key.
    If a batch lacks them (none sought), every range is read from the checked tables, in a
    statement without parameters (a key column's name may hold a `%`).
    """
    from pgstage.pipeline.validate import range_key   # (a skipped run imports no validation)

    name = range_key(spec, types)
    if name is None:
        return None
    params: list[str | None] = []
    ranges: list[sql.Composable] = []
    for i, c in enumerate(checked):
        if any(c.key_range is None for c in checked):
            ranges.append(sql.SQL("SELECT {} AS b, min({k}) AS lo, max({k}) AS hi FROM {}").format(
                sql.Literal(i), c.ident, k=sql.Identifier(name)))
        else:
            assert c.key_range is not None
            ranges.append(sql.SQL("SELECT {} AS b, %s::{t} AS lo, %s::{t} AS hi").format(sql.Literal(i), t=types[name].cast))
            params += c.key_range
    return sql.SQL("WITH r AS ({}) SELECT EXISTS (SELECT 1 FROM r a JOIN r z ON a.b < z.b"
                   " AND a.lo <= z.hi AND z.lo <= a.hi)").format(sql.SQL(" UNION ALL ").join(ranges)), params


def batches_overlap(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType],
                    checked: list[Checked]) -> bool:
    """True unless the batches provably share no key (then `find_beaten` is not needed); False without a key."""
    if not spec.pipeline.key:   # keyless strategies keep every valid record
        return False
    query = build_overlap(spec, types, checked)
    if query is None:
        return True
    row = execute(conn, query[0], query[1] or None, label="merge: batches overlap?").fetchone()
    return bool(row is None or row[0])


def _deduplicated(spec: Spec, types: dict[str, ColumnType], checked: Checked, beaten: str | None, *,
                  dedup: bool = True, record: bool = False, records: Records | None = None) -> sql.Composed:
    """SELECT the batch's valid rows as target columns, one per key (the winner) unless `dedup` is False.

    `dedup=False` is for a batch known to hold each key once: it skips the DISTINCT ON sort.
    `record`: also `_record`, the record number in its file (append).
    `records` (first, last) keeps only the rows of one merge chunk: the winners whose record
    number is in the range, the winner chosen over the whole batch, so a key repeated across
    two chunks is merged once, by the chunk of its winner.
    """
    mode = soft_deletes(spec)
    names = [*target_columns(spec), *([DELETED_AT] if mode else []), *([ROW_HASH] if checked.hashed else []), KNOWN]
    outputs: list[sql.Composable] = [sql.Identifier(n) for n in names]
    hashed_id = surrogate.computed(spec)
    if hashed_id:
        outputs.append(sql.SQL("{} AS {}").format(surrogate.build_hash(spec, types, "b"), sql.Identifier(hashed_id)))
    if record:
        outputs.append(sql.SQL("b._rec AS _record"))
    cols = sql.SQL(", ").join(outputs)
    picks = [sql.SQL("{} AS {}").format(transform.const(c, types[n]), sql.Identifier(n)) if c.const is not None
             else sql.SQL("c.{}").format(sql.Identifier(n))
             for n, c in spec.columns.items()]
    if spec.load.raw_column:
        picks.append(sql.SQL("c._raw_record AS {}").format(sql.Identifier(spec.load.raw_column)))
    picks += [sql.SQL("c.{}").format(sql.Identifier(n)) for n in ([ROW_HASH] if checked.hashed else [])]
    picks.append(sql.SQL("c.{}").format(sql.Identifier(KNOWN)))
    rows: sql.Composable = sql.SQL("{} c").format(checked.ident)
    if mode:  # the source's deleted_at is staged beside the fields; the checked table has only typed columns
        picks.append(sql.SQL("g.{}::timestamptz AS {}").format(checked.staged.column(SOURCE_DELETED_AT),
                                                               sql.Identifier(DELETED_AT)))
        rows = sql.SQL("{} c JOIN {} g ON g._rec = c._rec").format(checked.ident, checked.staged.ident)
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    order: list[sql.Composable] = [*keys, *_rank_order(spec, sql.Identifier("_rec"))]
    not_beaten: sql.Composable = sql.SQL("")
    if beaten:
        not_beaten = sql.SQL(" WHERE NOT EXISTS (SELECT 1 FROM {} x WHERE x._file = {} AND x._rec = c._rec)").format(
            sql.Identifier(LEDGER_SCHEMA, beaten), sql.Literal(checked.staged.file_no))
    if records is not None and not dedup:
        not_beaten = sql.SQL("{} {} c._rec BETWEEN {} AND {}").format(
            not_beaten, sql.SQL("AND" if beaten else "WHERE"), sql.Literal(records[0]), sql.Literal(records[1]))
    valid = sql.SQL("SELECT c._rec, {picks} FROM {rows}{not_beaten}").format(
        picks=sql.SQL(", ").join(picks), rows=rows, not_beaten=not_beaten)
    if not dedup:
        return sql.SQL("SELECT {} FROM ({}) b").format(cols, valid)
    if records is not None:
        return sql.SQL("SELECT {cols} FROM (SELECT DISTINCT ON ({keys}) _rec, {cols} FROM ({valid}) b ORDER BY {order})"
                       " w WHERE _rec BETWEEN {first} AND {last}").format(
            keys=sql.SQL(", ").join(keys), cols=cols, valid=valid, order=sql.SQL(", ").join(order),
            first=sql.Literal(records[0]), last=sql.Literal(records[1]))
    return sql.SQL("SELECT DISTINCT ON ({keys}) {cols} FROM ({valid}) b ORDER BY {order}").format(
        keys=sql.SQL(", ").join(keys), cols=cols, valid=valid, order=sql.SQL(", ").join(order))


def _classify(spec: Spec, types: dict[str, ColumnType], checked: Checked, beaten: str | None,
              target_exists: bool = True, *, dedup: bool = True, records: Records | None = None) -> sql.Composed:
    """`WITH src AS (deduplicated valid rows), cls AS (each with its action)`: shared by merge and dry run.

    Actions: i insert, w write (update), u unchanged, s stale, d delete. `_ctid` locates the
    target row a `w` or `d` changes.
    """
    mode = soft_deletes(spec)
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    src = sql.SQL("WITH src AS ({})").format(_deduplicated(spec, types, checked, beaten, dedup=dedup, records=records))
    was_deleted = sql.SQL(", t._deleted_at IS NOT NULL AS _was_deleted") if mode == "mark" else sql.SQL("")
    if not target_exists:  # a dry run before the first load: everything would be inserted (a deletion: nothing)
        act = "CASE WHEN s._deleted_at IS NULL THEN 'i' ELSE 'u' END" if mode == "delete" else "'i'"
        return sql.SQL("{}, cls AS (SELECT s.*, {} AS _act{}, NULL::tid AS _ctid FROM src s)").format(
            src, sql.SQL(act), sql.SQL(", false AS _was_deleted") if mode == "mark" else sql.SQL(""))
    same = _same(spec)
    stale = _stale_condition(spec)
    absent = sql.SQL("t.{} IS NULL").format(keys[0])
    deletion = sql.SQL("s._deleted_at IS NOT NULL")
    # A known record reproduces its target row (pipeline/known.py): unchanged, whatever else holds.
    whens: list[sql.Composable] = [sql.SQL("WHEN s.{} THEN 'u' ").format(sql.Identifier(KNOWN)),
                                   sql.SQL("WHEN {} THEN 'i' ").format(absent)]
    if mode == "delete":  # nothing to delete when the row is absent; stale when the target's row wins
        whens = [sql.SQL("WHEN {} AND {} THEN 'u' ").format(deletion, absent), *whens]  # no known rows here
        if stale is not None:
            whens.append(sql.SQL("WHEN {} AND ({}) THEN 's' ").format(deletion, stale))
        whens.append(sql.SQL("WHEN {} THEN 'd' ").format(deletion))
    deletions = sql.SQL("").join(whens)
    return sql.SQL(
        "{src}, cls AS (SELECT s.*, CASE {deletions}WHEN {same} THEN 'u' {stale}ELSE 'w' END AS _act{was_deleted},"
        " t.ctid AS _ctid FROM src s LEFT JOIN {target} t ON {join})"
    ).format(src=src, deletions=deletions, same=same, was_deleted=was_deleted,
             stale=sql.SQL("WHEN {} THEN 's' ").format(stale) if stale is not None else sql.SQL(""),
             target=sql.Identifier(*spec.target),
             join=sql.SQL(" AND ").join(sql.SQL("t.{0} = s.{0}").format(k) for k in keys))


def build_merge(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
                beaten: str | None = None, *, dedup: bool = True, records: Records | None = None) -> sql.Composed:
    """The single merge statement of one batch (pure: returns SQL, runs nothing).

    It returns one row: distinct, inserted, updated, unchanged, stale, deleted, and the number
    of updates and deletes the classification planned (see `merge`). It takes no parameters
    (the run id is a literal): spec values in it may hold a `%`.
    """
    names = _written_columns(spec, checked)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    non_key = [sql.Identifier(n) for n in names if n not in _fixed(spec)]
    sets = sql.SQL(", ").join([*(sql.SQL("{0} = cls.{0}").format(c) for c in non_key),
                               sql.SQL("_updated_at = now(), _run_id = {}").format(sql.Literal(run_id))])
    # The classification found each row to change at cls._ctid: a TID scan, not a second key
    # lookup. Should a concurrent writer have changed the row since this statement's snapshot,
    # PostgreSQL re-checks the condition against the new version, whose ctid differs: the row is
    # skipped, `merge()` sees fewer writes than planned and the batch is retried.
    deleting = soft_deletes(spec) == "delete"
    delete: sql.Composable = sql.SQL("")
    if deleting:
        delete = sql.SQL(", del AS (DELETE FROM {} t USING cls WHERE cls._act = 'd' AND t.ctid = cls._ctid"
                         " RETURNING 1)").format(sql.Identifier(*spec.target))
    deleted = _deleted_count(spec) if soft_deletes(spec) else sql.SQL(", 0")
    return sql.SQL(
        "{classify}, ins AS ("
        " INSERT INTO {target} ({cols}, _loaded_at, _updated_at, _run_id)"
        " SELECT {cols}, now(), now(), {run_id} FROM cls WHERE _act = 'i' RETURNING 1"
        "), upd AS ("
        " UPDATE {target} t SET {sets} FROM cls WHERE cls._act = 'w' AND t.ctid = cls._ctid RETURNING 1"
        "){delete}"
        " SELECT count(*), (SELECT count(*) FROM ins), (SELECT count(*) FROM upd){deletes},"
        " count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's'){deleted},"
        " count(*) FILTER (WHERE _act IN ('w', 'd')) FROM cls"
    ).format(classify=_classify(spec, types, checked, beaten, dedup=dedup, records=records), target=sql.Identifier(*spec.target), cols=cols,
             run_id=sql.Literal(run_id), sets=sets, delete=delete, deleted=deleted,
             deletes=sql.SQL(" + (SELECT count(*) FROM del)") if deleting else sql.SQL(""))


def build_insert(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
                 beaten: str | None = None, *, dedup: bool, records: Records | None = None) -> sql.Composed:
    """The merge of a batch into a target that holds none of its keys: a plain INSERT … SELECT.

    No classification join and no CTE to materialize; without duplicate keys, no DISTINCT ON
    sort either. `merge` takes this path only when the target is empty, or holds none of the
    batch's keys and has a unique index on the key (`build_holds_a_key`), through
    `_insert_new_keys`: should a concurrent load insert some of the keys meanwhile, the unique
    index refuses the batch and it is retried.
    """
    names = _written_columns(spec, checked)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    src = _deduplicated(spec, types, checked, beaten, dedup=dedup, records=records)
    return sql.SQL("INSERT INTO {target} ({cols}, _loaded_at, _updated_at, _run_id)"
                   " SELECT {cols}, now(), now(), {run_id} FROM ({src}) s").format(
        target=sql.Identifier(*spec.target), cols=cols, run_id=sql.Literal(run_id), src=src)


# Rows sampled to choose between classifying first and upserting; the share of them that
# must be writes (among those whose key exists) for the upsert to be chosen.
WRITE_SAMPLE = 1000
MIN_WRITE_SHARE = 0.9


def build_write_sample(spec: Spec, types: dict[str, ColumnType], checked: Checked,
                       records: Records | None = None) -> sql.Composed:
    """(sampled rows whose key is in the target, how many of those the merge would overwrite).

    `records`: sample only that merge chunk's rows. Sampled over the whole batch, a chunk would
    count the rows earlier chunks of its batch already wrote as unchanged, and the batch's later
    chunks would leave the upsert for the classifying merge: slower, and retried whenever the
    application updates one of its rows meanwhile (see `build_merge`).
    """
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    sample = sql.SQL("SELECT * FROM ({}) b WHERE NOT b.{} LIMIT {}").format(
        _deduplicated(spec, types, checked, None, dedup=False, records=records), sql.Identifier(KNOWN),
        sql.Literal(WRITE_SAMPLE))
    return sql.SQL("SELECT count(t.{k}), count(*) FILTER (WHERE t.{k} IS NOT NULL AND {writes}) FROM ({sample}) s"
                   " LEFT JOIN LATERAL ({probe}) t ON true").format(
        k=keys[0], writes=_overwrites(spec), sample=sample, probe=_probe(spec))


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


def _probe(spec: Spec) -> sql.Composed:
    """The target row with the key of the batch's row `s`: one probe of the key index (`key_probe`)."""
    return key_probe(spec, [sql.SQL("s.{}").format(sql.Identifier(k)) for k in spec.pipeline.key])


def build_holds_a_key(spec: Spec, types: dict[str, ColumnType], checked: Checked,
                      records: Records | None = None) -> sql.Composed:
    """Whether the target holds the key of any of the batch's valid rows (of `records`' chunk).

    One probe of the key index per row until the first key found (see `key_probe`): a
    batch of updates answers at its first existing key, a batch of new keys (a backfill's next
    day) probes every row, a few milliseconds for 5,000 rows, to be merged by a plain INSERT.
    Every row counts, duplicates and the run's cross-batch losers too: a superset is safe.
    """
    rows = _deduplicated(spec, types, checked, None, dedup=False, records=records)
    return sql.SQL("SELECT EXISTS (SELECT 1 FROM ({}) s, LATERAL ({}) t)").format(rows, _probe(spec))


def build_above_target(spec: Spec, types: dict[str, ColumnType],
                       checked: Checked) -> tuple[sql.Composed, list[str]] | None:
    """Whether the batch's least valid key lies above the target's greatest: then the target holds none of its keys.

    Exports number their orders in time, so a backfill's next day starts above every day before
    it: one descent of the key's btree index (`max()`) answers what `build_holds_a_key` answers
    with a probe a row. The least key is validation's (`Checked.key_range`, on the first varying
    key column), compared as a parameter cast back to the key's type. True, or false/NULL
    (can't tell: an empty target, no btree index leading with that column, whose `max()` would
    read the whole target); the caller probes unless true. None when it cannot be asked: no
    range, a text key (the batch's least value and the target's greatest may be ordered by
    different collations), or a name holding a `%` (the statement takes parameters).
    """
    from pgstage.pipeline.validate import range_key   # (a skipped run imports no validation)

    name = range_key(spec, types)
    if (name is None or checked.key_range is None or checked.key_range[0] is None
            or types[name].category not in ("N", "D") or any("%" in n for n in (name, *spec.target))):
        return None
    query = sql.SQL(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid"
        " JOIN pg_am m ON m.oid = x.relam JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE i.indrelid = %s::regclass AND a.attname = %s AND m.amname = 'btree' AND i.indisvalid"
        " AND i.indpred IS NULL) THEN (SELECT max(t.{k}) FROM {target} t) < %s::{kind} END").format(
        k=sql.Identifier(name), target=sql.Identifier(*spec.target), kind=types[name].cast)
    return query, [qualified(*spec.target), name, checked.key_range[0]]


def holds_a_key(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
                records: Records | None = None) -> bool:
    """Whether the target holds a key of the batch (of `records`' chunk): by its key range if it can tell, else probed."""
    above = build_above_target(spec, types, checked)
    if above is not None:
        row = execute(conn, above[0], above[1], label="merge: keys above target?").fetchone()
        if row is not None and row[0]:
            return False
    found = execute(conn, build_holds_a_key(spec, types, checked, records), label="merge: keys in target?").fetchone()
    return bool(found and found[0])


def build_upsert(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
                 beaten: str | None = None, *, dedup: bool = True, records: Records | None = None) -> sql.Composed:
    """The merge of a batch that mostly changes rows: `INSERT … ON CONFLICT DO UPDATE … WHERE`.

    Each row is looked up once, by the primary key's own probe, and written in the same visit;
    classifying first joins the batch to the target and then visits every changed row again.
    The price: a conflicting row the WHERE leaves alone is still locked, so this path is taken
    only when a sample says nearly every existing row changes (see `merge`). Rows not written
    are classified afterwards, against the statement's snapshot, which is the target as it was
    before it. Returns the same row as `build_merge`.
    """
    names = _written_columns(spec, checked)
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in names)
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    key_list = sql.SQL(", ").join(keys)
    sets = sql.SQL(", ").join([*(sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(n))
                                 for n in names if n not in _fixed(spec)),
                               sql.SQL("_updated_at = now(), _run_id = {}").format(sql.Literal(run_id))])
    conflict = (sql.SQL("DO NOTHING") if spec.pipeline.strategy == "insert_only" else
                sql.SQL("DO UPDATE SET {} WHERE {}").format(sets, _overwrites(spec, "t", "excluded")))
    on = sql.SQL(" AND ").join(sql.SQL("w.{0} = s.{0}").format(k) for k in keys)
    join = sql.SQL(" AND ").join(sql.SQL("t.{0} = r.{0}").format(k) for k in keys)
    return sql.SQL(
        "WITH every AS ({every}), src AS (SELECT * FROM every WHERE NOT {known}),"
        " w AS (INSERT INTO {target} AS t ({cols}, _loaded_at, _updated_at, _run_id)"
        "  SELECT {cols}, now(), now(), {run_id} FROM src ON CONFLICT ({key_list}) {conflict}"
        "  RETURNING {returned}, (t.xmax = 0) AS _inserted),"
        " r AS (SELECT s.* FROM src s WHERE NOT EXISTS (SELECT 1 FROM w WHERE {on})),"
        " rc AS (SELECT count(*) FILTER (WHERE {same}) AS u, count(*) FILTER (WHERE NOT ({same})) AS st"
        "  FROM r JOIN {target} t ON {join})"
        " SELECT (SELECT count(*) FROM every), count(*) FILTER (WHERE _inserted), count(*) FILTER (WHERE NOT _inserted),"
        " (SELECT count(*) FROM every WHERE {known}) + (SELECT u FROM rc), (SELECT st FROM rc), 0,"
        " count(*) FILTER (WHERE NOT _inserted) FROM w"
    ).format(every=_deduplicated(spec, types, checked, beaten, dedup=dedup, records=records), known=sql.Identifier(KNOWN),
             target=sql.Identifier(*spec.target), cols=cols, run_id=sql.Literal(run_id), key_list=key_list,
             conflict=conflict, returned=sql.SQL(", ").join(sql.SQL("t.{}").format(k) for k in keys), on=on,
             same=_same(spec, "t", "r"), join=join)


def build_has_duplicates(spec: Spec, checked: Checked) -> sql.Composed:
    """Whether some key occurs twice among the batch's valid rows.

    `count(DISTINCT …)` sorts only the key, and a file's keys usually arrive nearly in order:
    a fraction of the DISTINCT ON sort of whole rows that it lets the merge skip.
    """
    keys = [sql.Identifier(k) for k in spec.pipeline.key if spec.columns[k].const is None]
    if not keys:  # every key column is a constant: all valid rows share one key
        return sql.SQL("SELECT count(*) > 1 FROM {}").format(checked.ident)
    key = keys[0] if len(keys) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(keys))
    return sql.SQL("SELECT count(*) <> count(DISTINCT {}) FROM {}").format(key, checked.ident)


def has_duplicates(conn: psycopg.Connection[Any], spec: Spec, checked: Checked) -> bool:
    found = execute(conn, build_has_duplicates(spec, checked), label="merge: duplicate keys?").fetchone()
    return bool(found and found[0])


def build_prediction(spec: Spec, types: dict[str, ColumnType], checked: Checked, beaten: str | None,
                     target_exists: bool) -> sql.Composed:
    """What `build_merge` would count, computed read-only: the dry run's forecast."""
    return sql.SQL(
        "{} SELECT count(*), count(*) FILTER (WHERE _act = 'i'), count(*) FILTER (WHERE _act IN ('w', 'd')),"
        " count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's'){} FROM cls"
    ).format(_classify(spec, types, checked, beaten, target_exists), _deleted_count(spec))


def predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
            beaten: str | None, target_exists: bool) -> MergeCounts:
    row = execute(conn, build_prediction(spec, types, checked, beaten, target_exists),
                  label=f"dry run: predict {checked.staged.source.name}").fetchone()
    assert row is not None
    return MergeCounts(*row)


def target_is_empty(conn: psycopg.Connection[Any], spec: Spec) -> bool:
    row = execute(conn, sql.SQL("SELECT NOT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(*spec.target)),
                  label="merge: target empty?").fetchone()
    return bool(row and row[0])


def merge(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
          run_id: int, beaten: str | None = None, *, into_empty: bool = False, upserts: bool = False,
          records: Records | None = None, dedup: bool | None = None) -> MergeCounts:
    """Merge one batch inside the caller's transaction and return what happened to its rows.

    `into_empty`: the target was empty when the run's merges began, and no two batches of the
    run merge the same key (cross-batch losers are `beaten`), so every valid row is an insert.
    With `upserts` (the target has an immediate unique index on the key), so is every row of a
    batch whose keys the target does not hold (`holds_a_key`: a backfill's next day). Either
    way one INSERT … SELECT, tried first without deduplication where the unique index would
    refuse a repeated key (`_insert_new_keys`): a first load, or a backfill's day, pays no
    classification join and no count of its keys. `records`: merge only one chunk of the
    batch (see `_deduplicated`; run/merge_batches.py's `_merge_chunks` runs them), with `dedup`
    (whether the batch repeats a key) found once for all its chunks by `has_duplicates`. A
    batch that holds existing keys: with `upserts` and a sample saying nearly every existing
    row changes, the single pass of `build_upsert`; otherwise the classifying statement of
    `build_merge`.
    """
    label = f"merge {checked.staged.source.name}"
    # New keys only (an empty target, or one whose key index holds none of the batch's: a
    # backfill's next day) are one plain INSERT: no classification join, no ON CONFLICT to
    # speculate on, no CTE to count in (~35% less time than the upsert for 5,000 new rows).
    # Known records' keys are in the target, so they never take it unless the target is empty.
    if soft_deletes(spec) is None and (into_empty or (upserts and not checked.known and
                                                      not holds_a_key(conn, spec, types, checked, records))):
        return _insert_new_keys(conn, spec, types, checked, run_id, beaten, label, judged=upserts,
                                records=records, dedup=dedup)
    if dedup is None:
        dedup = has_duplicates(conn, spec, checked)
    if checked.known and checked.known == checked.valid and not dedup and beaten is None and records is None:
        # Every valid record reproduces its target row (a reload of the same bytes): nothing to write.
        return MergeCounts(distinct=checked.known, inserted=0, updated=0, unchanged=checked.known, stale=0)
    try:
        query = None
        if upserts and soft_deletes(spec) is None:
            found = execute(conn, build_write_sample(spec, types, checked, records), label="merge: writes sample").fetchone()
            existing, writes = found if found else (0, 0)
            if writes >= MIN_WRITE_SHARE * existing:
                query = build_upsert(spec, types, checked, run_id, beaten, dedup=dedup, records=records)
        if query is None:
            # The classification joins the batch to the target; without statistics the planner
            # misjudges the batch's size (a DISTINCT ON is guessed to leave 200 rows; a fresh
            # table is sized from its pages and column widths) and may hash all of a big target
            # for a small batch. Sampling the key costs a few hundredths of a second.
            varying = [sql.Identifier(k) for k in spec.pipeline.key if spec.columns[k].const is None]
            execute(conn, sql.SQL("ANALYZE {} ({})").format(checked.ident, sql.SQL(", ").join(
                varying or [sql.Identifier("_rec")])), label="merge: analyze")
            query = build_merge(spec, types, checked, run_id, beaten, dedup=dedup, records=records)
        row = execute(conn, query, label=label).fetchone()
    except DatabaseError as exc:
        if exc.sqlstate == UNIQUE_VIOLATION:
            # Another load inserted some of these keys after this batch was classified: the
            # batch is rolled back and retried, and then sees those rows as existing.
            raise TransientDatabaseError(f"a concurrent load wrote keys of {checked.staged.source.name}: {exc.message}",
                                         hint="retried automatically") from exc
        raise
    assert row is not None
    *counts, planned = row
    result = MergeCounts(*counts)
    accounted = result.inserted + result.updated + result.unchanged + result.stale
    if result.updated != planned or accounted != result.distinct:
        # A concurrent writer changed rows of this batch between its snapshot and its writes
        # (see build_merge, build_upsert): the counts would be wrong, so the batch is rolled
        # back and merged again.
        raise TransientDatabaseError(f"a concurrent load changed rows of {checked.staged.source.name} while it merged",
                                     hint="retried automatically")
    return result


def _insert_new_keys(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
                     run_id: int, beaten: str | None, label: str, *, judged: bool, records: Records | None,
                     dedup: bool | None) -> MergeCounts:
    """Write a batch whose keys the target does not hold with a plain INSERT; insert first, count repeated keys after.

    A batch rarely repeats a key, and counting its distinct keys first reads it once more
    (0.22 s a million rows; a few ms a backfill day). So where the target has an immediate
    unique index on exactly the key (`judged`) the rows go in as they are, inside a savepoint;
    only if the index refuses one are they rolled back, the keys counted and the rows written
    again, one per key (the strategy's winner, as ever). Without such an index nothing would
    refuse a repeated key: the keys are counted first. Chunks pass `dedup`, counted once for
    the batch. Other batches of the run hold none of these keys (cross-batch losers are
    `beaten`), and the target held none when the run looked (empty, or `holds_a_key`); so a
    key the index still refuses was written meanwhile by a concurrent load: the batch is
    rolled back and retried, and the retry counts that key as the update it has become.
    """
    try:
        if dedup is None and judged:
            try:
                with conn.transaction():   # a savepoint
                    written = execute(conn, build_insert(spec, types, checked, run_id, beaten, dedup=False,
                                                         records=records), label=label).rowcount
                return MergeCounts(distinct=written, inserted=written, updated=0, unchanged=0, stale=0)
            except DatabaseError as exc:
                if exc.sqlstate != UNIQUE_VIOLATION or not has_duplicates(conn, spec, checked):
                    raise   # not a repeated key of the batch: another load's (below), or no refusal at all
            dedup, label = True, f"{label} (one row per key)"
        elif dedup is None:
            dedup = has_duplicates(conn, spec, checked)
        written = execute(conn, build_insert(spec, types, checked, run_id, beaten, dedup=dedup, records=records),
                          label=label).rowcount
    except DatabaseError as exc:
        if exc.sqlstate == UNIQUE_VIOLATION:
            raise TransientDatabaseError(f"a concurrent load wrote keys of {checked.staged.source.name}: {exc.message}",
                                         hint="retried automatically") from exc
        raise
    return MergeCounts(distinct=written, inserted=written, updated=0, unchanged=0, stale=0)


def _key_from_raw(spec: Spec, types: dict[str, ColumnType], name: str, collation: str | None) -> sql.Composable:
    """A key column's typed value recomputed from a reject's raw JSON, NULL when it is not valid."""
    column = spec.columns[name]
    path = column.from_.split(".") if spec.source.kind == "jsonl" and column.from_ else [column.from_ or ""]
    raw = sql.SQL("(j.raw #>> {})").format(sql.Literal(path))
    return transform.typed(raw, column, types[name], spec.source.null, collation)


def build_resolve(spec: Spec, types: dict[str, ColumnType], run_id: int, collation: str | None = None) -> sql.Composed:
    """Mark earlier rejects of the pipeline resolved when this run wrote a row with their key."""
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    from_raw = sql.SQL(", ").join(_key_from_raw(spec, types, k, collation) for k in spec.pipeline.key)
    return sql.SQL(
        "UPDATE pgstage.rejects j SET resolved_by = {run} FROM pgstage.runs r"
        " WHERE r.run_id = j.run_id AND r.pipeline = {pipeline} AND NOT r.dry_run AND j.run_id <> {run}"
        " AND j.resolved_by IS NULL AND ({from_raw}) IN (SELECT {keys} FROM {target} WHERE _run_id = {run})"
    ).format(run=sql.Literal(run_id), pipeline=sql.Literal(spec.pipeline.name), from_raw=from_raw,
             keys=sql.SQL(", ").join(keys), target=sql.Identifier(*spec.target))


def resolve_rejects(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], run_id: int,
                    collation: str | None = None) -> int:
    return execute(conn, build_resolve(spec, types, run_id, collation), label="merge: resolve earlier rejects").rowcount
