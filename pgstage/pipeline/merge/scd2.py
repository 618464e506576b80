"""scd2: keep every version of a key, each valid over [`_valid_from`, `_valid_to`).

A batch's rows (one per key, the run's winner) are compared with the key's latest version:

    no version yet, or the latest is closed and the row is not older  → opens one     (inserted)
    older than the latest version (or than its close)                  → nothing      (stale)
    tracked values equal to the current version's (NULL = NULL)        → nothing      (unchanged)
    tracked values differ, later than the current version              → closes it, opens one (updated)
    tracked values differ, same valid_from as the current version      → nothing      (stale: history is
                                                                           never rewritten)

`valid_from` is the row's `version` column, else the run's as-of time (`--as-of`, default the
partition's day end, else the run's start as the ledger recorded it, so a resumed run uses the
same). With `[scd2] on_missing = "close"` (a full snapshot), current keys the run did not bring
are closed at the as-of time when the run's last batch commits (`deleted`); `new_record` opens a
deletion version (`_is_deleted`) instead. The run's keys are kept for that in `pgstage._seen_<run>`,
committed with each batch.

The database holds the invariants whatever runs at once: a partial unique index allows one
current row per key, and an exclusion constraint (btree_gist) forbids overlapping validity.
Composite keys are compared column by column, never as concatenated text.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.errors import DatabaseError, TransientDatabaseError
from pgstage.names import LEDGER_SCHEMA, SEEN_PREFIX
from pgstage.pipeline.merge import surrogate
from pgstage.pipeline.merge.keyed import MergeCounts, _deduplicated, _written_columns
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec

if TYPE_CHECKING:
    from pgstage.pipeline.validate import Checked

TIMESTAMPTZ = "timestamp with time zone"
SCD_COLUMNS = {"_valid_from": TIMESTAMPTZ, "_valid_to": TIMESTAMPTZ, "_is_current": "boolean", "_scd_id": "uuid"}
IS_DELETED = "_is_deleted"
_TZ = ColumnType(TIMESTAMPTZ, "D")


def columns(spec: Spec) -> dict[str, str]:
    """The history columns an scd2 target gets (`_is_deleted` with on_missing = "new_record")."""
    return {**SCD_COLUMNS, **({IS_DELETED: "boolean"} if marks_deletions(spec) else {})}


def marks_deletions(spec: Spec) -> bool:
    return spec.scd2.on_missing == "new_record"


def closes_missing(spec: Spec) -> bool:
    return spec.scd2.on_missing != "ignore"


def tracked(spec: Spec) -> list[str]:
    """The columns whose change opens a version: `[scd2] track`, else every column outside the key."""
    if spec.scd2.track:
        return list(spec.scd2.track)
    return [c for c in spec.columns if c not in spec.pipeline.key]


def ddl(spec: Spec) -> list[sql.Composable]:
    """Column and constraint definitions of an scd2 target (with the key columns, which come first)."""
    keys = [sql.Identifier(k) for k in spec.pipeline.key]
    out: list[sql.Composable] = [
        sql.SQL("_valid_from timestamptz NOT NULL"), sql.SQL("_valid_to timestamptz"),
        sql.SQL("_is_current boolean NOT NULL"), sql.SQL("_scd_id uuid PRIMARY KEY")]
    if marks_deletions(spec):
        out.append(sql.SQL("_is_deleted boolean NOT NULL DEFAULT false"))
    out.append(sql.SQL("CHECK (_is_current = (_valid_to IS NULL))"))
    out.append(sql.SQL("CHECK (_valid_to IS NULL OR _valid_to > _valid_from)"))
    out.append(sql.SQL("EXCLUDE USING gist ({}, tstzrange(_valid_from, _valid_to) WITH &&)").format(
        sql.SQL(", ").join(sql.SQL("{} WITH =").format(k) for k in keys)))
    return out


def build_current_index(spec: Spec) -> sql.Composed:
    """At most one current row per key, enforced by the database."""
    schema, table = spec.target
    return sql.SQL("CREATE UNIQUE INDEX {} ON {} ({}) WHERE _is_current").format(
        sql.Identifier(f"{table[:50]}_current"), sql.Identifier(schema, table),
        sql.SQL(", ").join(sql.Identifier(k) for k in spec.pipeline.key))


def seen_table(run_id: int) -> str:
    """The run's keys, for on_missing (kept until the run succeeds, like `_dup_<run>`)."""
    return f"{SEEN_PREFIX}_{run_id}"


def _key_match(spec: Spec, a: str, b: str) -> sql.Composable:
    return sql.SQL(" AND ").join(sql.SQL("{}.{} = {}.{}").format(sql.Identifier(a), sql.Identifier(k),
                                                                 sql.Identifier(b), sql.Identifier(k))
                                 for k in spec.pipeline.key)


def _scd_id(spec: Spec, types: dict[str, ColumnType], alias: str, valid_from: sql.Composable) -> sql.Composed:
    """Deterministic id of (key, valid_from): the same version gets the same id on every re-run."""
    return surrogate.hash_of([*((sql.Identifier(alias, k), types[k]) for k in spec.pipeline.key), (valid_from, _TZ)])


def _classify(spec: Spec, types: dict[str, ColumnType], checked: Checked, beaten: str | None,
              as_of: datetime, target_exists: bool = True) -> sql.Composed:
    """`SELECT` each of the batch's rows with `_vf` (its valid_from), `_cur` (the version it closes) and `_act`."""
    version = spec.pipeline.version
    vf: sql.Composable = sql.Literal(as_of)
    if version:   # a date or timestamp version is read in UTC, whatever the session's TimeZone
        utc = sql.SQL("") if types[version].name == TIMESTAMPTZ else sql.SQL("::timestamp AT TIME ZONE 'UTC'")
        vf = sql.SQL("coalesce(s.{}{}, {})").format(sql.Identifier(version), utc, sql.Literal(as_of))
    src = sql.SQL("SELECT s.*, {} AS _vf FROM ({}) s").format(vf, _deduplicated(spec, types, checked, beaten))
    if not target_exists:
        return sql.SQL("SELECT v.*, NULL::uuid AS _cur, 'i' AS _act FROM ({}) v").format(src)
    track = tracked(spec)
    same = (sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.SQL("v.{}").format(sql.Identifier(c)) for c in track),
        sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in track)) if track else sql.SQL("true"))
    if marks_deletions(spec):   # a deletion version differs from any row that brings the key back
        same = sql.SQL("NOT t._is_deleted AND {}").format(same)
    # The current version by the partial unique index (one join); only a key without one looks
    # for its last close, so a snapshot of known keys pays no per-row probe.
    return sql.SQL(
        "SELECT v.*, t._scd_id AS _cur, CASE"
        " WHEN t._scd_id IS NULL THEN CASE WHEN v._vf < z._closed THEN 's' ELSE 'i' END"
        " WHEN v._vf < t._valid_from THEN 's'"
        " WHEN {same} THEN 'u'"
        " WHEN v._vf = t._valid_from THEN 's'"
        " ELSE 'w' END AS _act"
        " FROM ({src}) v LEFT JOIN {target} t ON {current} AND t._is_current"
        " LEFT JOIN LATERAL (SELECT max(x._valid_to) AS _closed FROM {target} x WHERE t._scd_id IS NULL AND {match})"
        " z ON true"
    ).format(same=same, src=src, target=sql.Identifier(*spec.target), match=_key_match(spec, "x", "v"),
             current=_key_match(spec, "t", "v"))


_CLS = sql.Identifier("_pgstage_scd")


def build_steps(spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int, beaten: str | None,
                as_of: datetime) -> list[tuple[str, sql.Composed]]:
    """The statements of one batch's merge, in order; the last returns its counts.

    The classification is kept in a temporary table so that closing the current versions and
    opening the new ones are two statements: the new current row must not meet the old one
    in the unique index or the exclusion constraint.
    """
    target = sql.Identifier(*spec.target)
    cols = _written_columns(spec, checked)
    names = sql.SQL(", ").join(sql.Identifier(n) for n in cols)
    run = sql.Literal(run_id)
    deleted = (sql.SQL(", _is_deleted"), sql.SQL(", false")) if marks_deletions(spec) else (sql.SQL(""), sql.SQL(""))
    steps = [
        ("merge: scd2 classify", sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(
            _CLS, _classify(spec, types, checked, beaten, as_of))),
        # A fresh temporary table has no statistics: without them the planner may scan the
        # whole target once per changed row in the two statements below.
        ("merge: scd2 analyze", sql.SQL("ANALYZE {}").format(_CLS)),
        ("merge: scd2 close", sql.SQL(
            "UPDATE {} t SET _valid_to = c._vf, _is_current = false, _updated_at = now(), _run_id = {}"
            " FROM {} c WHERE c._act = 'w' AND t._scd_id = c._cur AND t._is_current").format(target, run, _CLS)),
        ("merge: scd2 open", sql.SQL(
            "INSERT INTO {} ({names}, _valid_from, _valid_to, _is_current, _scd_id{d}, _loaded_at, _updated_at, _run_id)"
            " SELECT {names}, _vf, NULL, true, {scd_id}{dv}, now(), now(), {run} FROM {cls} c"
            " WHERE _act IN ('i', 'w')").format(
            target, names=names, d=deleted[0], dv=deleted[1], run=run, cls=_CLS,
            scd_id=_scd_id(spec, types, "c", sql.SQL("c._vf")))),
    ]
    if closes_missing(spec):
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.pipeline.key)
        steps.append(("merge: scd2 seen keys", sql.SQL("INSERT INTO {} ({k}) SELECT {k} FROM {}").format(
            sql.Identifier(LEDGER_SCHEMA, seen_table(run_id)), _CLS, k=keys)))
    steps.append(("merge: scd2 counts", sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE _act = 'i'), count(*) FILTER (WHERE _act = 'w'),"
        " count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's') FROM {}").format(_CLS)))
    return steps


def merge(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked, run_id: int,
          beaten: str | None, as_of: datetime) -> MergeCounts:
    """One batch's versions, inside the caller's transaction."""
    try:
        closed = 0
        row = None
        for label, statement in build_steps(spec, types, checked, run_id, beaten, as_of):
            cursor = execute(conn, statement, label=label)
            if label == "merge: scd2 close":
                closed = cursor.rowcount
            elif label == "merge: scd2 counts":
                row = cursor.fetchone()
        execute(conn, sql.SQL("DROP TABLE {}").format(_CLS), label="merge: scd2 done")
    except DatabaseError as exc:
        if isinstance(exc.__cause__, (psycopg.errors.UniqueViolation, psycopg.errors.ExclusionViolation)):
            # Another run wrote versions of these keys after this batch was classified: retry, and see them.
            raise TransientDatabaseError(f"a concurrent load wrote versions of {checked.staged.source.name}:"
                                         f" {exc.message}", hint="retried automatically") from exc
        raise
    assert row is not None
    counts = MergeCounts(*row)
    if closed != counts.updated:
        raise TransientDatabaseError(f"a concurrent load closed versions of {checked.staged.source.name}",
                                     hint="retried automatically")
    return counts


def ensure_seen(conn: psycopg.Connection[Any], spec: Spec, run_id: int) -> None:
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.pipeline.key)
    execute(conn, sql.SQL("CREATE TABLE IF NOT EXISTS {} AS SELECT {} FROM {} WITH NO DATA").format(
        sql.Identifier(LEDGER_SCHEMA, seen_table(run_id)), keys, sql.Identifier(*spec.target)), label="merge: scd2 seen")


def _missing(spec: Spec, as_of: datetime, keys_from: sql.Composable) -> sql.Composed:
    """Current versions whose key the run did not bring, closable at the as-of time.

    Not when the snapshot is older than the target's latest change: an old snapshot loaded
    again must not close what later snapshots kept.
    """
    target = sql.Identifier(*spec.target)
    alive = sql.SQL(" AND NOT t._is_deleted") if marks_deletions(spec) else sql.SQL("")
    return sql.SQL(
        "SELECT t.* FROM {target} t WHERE t._is_current{alive} AND t._valid_from < {as_of}"
        " AND {as_of} >= (SELECT max(greatest(_valid_from, _valid_to)) FROM {target})"
        " AND NOT EXISTS (SELECT 1 FROM {keys} s WHERE {match})").format(
        target=target, alive=alive, as_of=sql.Literal(as_of), keys=keys_from, match=_key_match(spec, "s", "t"))


def close_missing(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
                  run_id: int, as_of: datetime) -> int:
    """With the run's last batch: close (or, new_record, mark deleted) the current keys the run lacked."""
    gone = sql.Identifier("_pgstage_scd_gone")
    target = sql.Identifier(*spec.target)
    execute(conn, sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS {}").format(
        gone, _missing(spec, as_of, sql.Identifier(LEDGER_SCHEMA, seen_table(run_id)))), label="merge: scd2 missing")
    closed = execute(conn, sql.SQL(
        "UPDATE {} t SET _valid_to = {}, _is_current = false, _updated_at = now(), _run_id = {} FROM {} g"
        " WHERE t._scd_id = g._scd_id").format(target, sql.Literal(as_of), sql.Literal(run_id), gone),
        label="merge: scd2 close missing").rowcount
    if marks_deletions(spec):
        names = sql.SQL(", ").join(sql.Identifier(n) for n in _written_columns(spec, checked))
        execute(conn, sql.SQL(
            "INSERT INTO {} ({names}, _valid_from, _valid_to, _is_current, _scd_id, _is_deleted, _loaded_at,"
            " _updated_at, _run_id) SELECT {names}, {as_of}, NULL, true, {scd_id}, true, now(), now(), {run} FROM {} g"
        ).format(target, gone, names=names, as_of=sql.Literal(as_of), run=sql.Literal(run_id),
                 scd_id=_scd_id(spec, types, "g", sql.Literal(as_of))), label="merge: scd2 deletion versions")
    execute(conn, sql.SQL("DROP TABLE {}").format(gone), label="merge: scd2 missing done")
    return closed


def predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
            beaten: str | None, as_of: datetime, target_exists: bool) -> MergeCounts:
    row = execute(conn, sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE _act = 'i'), count(*) FILTER (WHERE _act = 'w'),"
        " count(*) FILTER (WHERE _act = 'u'), count(*) FILTER (WHERE _act = 's') FROM ({}) c").format(
        _classify(spec, types, checked, beaten, as_of, target_exists)),
        label=f"dry run: predict {checked.staged.source.name}").fetchone()
    assert row is not None
    return MergeCounts(*row)


def predict_missing(conn: psycopg.Connection[Any], spec: Spec, batches: list[Checked], as_of: datetime,
                    target_exists: bool) -> int:
    """How many current keys a run of these batches would close (the dry run's `deleted`)."""
    if not closes_missing(spec) or not target_exists or not batches:
        return 0
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.pipeline.key)
    union = sql.SQL(" UNION ALL ").join(sql.SQL("SELECT {} FROM {}").format(keys, c.ident) for c in batches)
    row = execute(conn, sql.SQL("SELECT count(*) FROM ({}) m").format(
        _missing(spec, as_of, sql.SQL("({})").format(union))), label="dry run: scd2 missing").fetchone()
    return int(row[0]) if row else 0

