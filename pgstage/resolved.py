"""What a run resolves against the catalog before it loads, and how a backfill keeps it from day to day.

Before a run stages anything it asks PostgreSQL for the spec's column types (a lookup per
type and a probe table), compares an existing target with the spec, checks the referenced
tables, and later reads the target's columns, its key index, the case collation and the
session's DateStyle. For one day of a backfill that is some twenty round trips (and a commit)
that find the same answers as the day before: only DDL can change them.

So a backfill's job keeps the answers per spec (`Memo`), each with a fingerprint of the
catalog rows they were read from (`build_snapshot`): the `xmin` of the target's and the
referenced tables' rows in pg_class, pg_attribute and pg_index, of the spec's types in
pg_type, and the session's search_path and DateStyle. Every CREATE, ALTER, DROP, RENAME or
index change writes a new version of one of those rows, so a new `xmin`. A unit compares the
fingerprint with one query; any difference and it resolves everything again, exactly as
`pgstage run` does (a target altered to disagree with the spec fails the unit with exit 2; one
altered compatibly is used as it now is). The fingerprint is taken *before* the answers are
read, so DDL that lands while they are read changes the next unit's fingerprint too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from pgstage import target
from pgstage.db import execute, qualified
from pgstage.errors import SpecError
from pgstage.pipeline import transform
from pgstage.spec import Spec, parse_reference


@dataclass(frozen=True)
class Resolved:
    """A spec's catalog facts as a run found them; `snapshot`: the fingerprint they were read under, if any.

    `found`, `collation`, `seed` and `upserts` are read once `target_read` (see `with_target`).
    """

    types: dict[str, transform.ColumnType]
    snapshot: str | None = None
    target_read: bool = False
    found: dict[str, str] | None = None     # the target's columns → types, None when it does not exist
    collation: str | None = None            # transform.case_collation
    seed: int | None = None                 # pipeline/known.py's row-hash seed, when the target keeps `_row_hash`
    upserts: bool = False                   # remembered facts only: a unique index ON CONFLICT (key) can use

    def target_complete(self, spec: Spec) -> bool:
        """The target exists with every column `target.ensure` would add: ensuring it again changes nothing."""
        if self.found is None:
            return False
        wanted = [*target.audit_columns(spec, self.found), *([spec.load.raw_column] if spec.load.raw_column else [])]
        return all(name in self.found for name in wanted)


class Memo:
    """One spec's `Resolved`, kept by a backfill's job from unit to unit (one thread: no lock)."""

    def __init__(self) -> None:
        self.resolved: Resolved | None = None
        self.hits = 0      # units that reused it (tests and traces read these)
        self.misses = 0


def relations(spec: Spec) -> list[str]:
    """The target and every referenced table, spelled as to_regclass reads them."""
    refs = [parse_reference(c.references) for c in spec.columns.values() if c.references]
    refs += [parse_reference(r.to) for r in spec.references.values()]
    return [qualified(*spec.target), *(qualified(r.schema_, r.table) for r in refs)]


def type_names(spec: Spec) -> list[str]:
    """The spec's type names that are names at all (resolve_types refuses the others before any lookup)."""
    return [c.pg_type for c in spec.columns.values() if transform.TYPE_NAME.match(c.pg_type)]


def build_snapshot() -> sql.Composed:
    """One text that changes whenever DDL touches the target, a referenced table or one of the spec's types.

    Parameters: `relations` (text[], qualified names) and `types` (text[]). A relation or type
    that does not exist contributes its position with no oid, so creating it changes the text.
    """
    return sql.SQL(
        "WITH r AS (SELECT n, to_regclass(name)::oid AS oid FROM unnest(%(relations)s::text[]) WITH ORDINALITY u(name, n))"
        " SELECT md5(concat_ws('|', current_setting('search_path'), current_setting('DateStyle'),"
        " (SELECT string_agg(concat_ws(':', r.n, c.oid, c.xmin), ',' ORDER BY r.n)"
        "  FROM r LEFT JOIN pg_class c ON c.oid = r.oid),"
        " (SELECT string_agg(concat_ws(':', a.attrelid, a.attnum, a.xmin), ',' ORDER BY a.attrelid, a.attnum)"
        "  FROM pg_attribute a JOIN r ON a.attrelid = r.oid WHERE a.attnum > 0),"
        " (SELECT string_agg(concat_ws(':', i.indexrelid, i.xmin), ',' ORDER BY i.indexrelid)"
        "  FROM pg_index i JOIN r ON i.indrelid = r.oid),"
        " (SELECT string_agg(concat_ws(':', u.n, t.oid, t.xmin), ',' ORDER BY u.n)"
        "  FROM unnest(%(types)s::text[]) WITH ORDINALITY u(name, n) LEFT JOIN pg_type t ON t.oid = to_regtype(u.name))))"
    ).format()


def snapshot(conn: psycopg.Connection[Any], spec: Spec) -> str:
    row = execute(conn, build_snapshot(), {"relations": relations(spec), "types": type_names(spec)},
                  label="catalog: snapshot").fetchone()
    assert row is not None
    return str(row[0])


def resolve(conn: psycopg.Connection[Any], spec: Spec, memo: Memo | None = None) -> Resolved:
    """The spec's types, checked with the target and references against the spec; raises what those checks raise.

    With a `memo`: its facts when the catalog has not changed since they were read (one query),
    else everything read anew, the target's state included, and remembered. Without one (a lone
    run) the target's state is read later, under the pipeline's lock (`with_target`).
    """
    if memo is None:
        return Resolved(_checked_types(conn, spec))
    mark = snapshot(conn, spec)
    if memo.resolved is not None and memo.resolved.snapshot == mark:
        memo.hits += 1
        return memo.resolved
    memo.misses += 1
    memo.resolved = None      # a failed check below must not leave the old answers in place
    memo.resolved = with_target(conn, spec, Resolved(_checked_types(conn, spec), mark))
    return memo.resolved


def with_target(conn: psycopg.Connection[Any], spec: Spec, facts: Resolved) -> Resolved:
    """`facts` with the target's state: its columns, the case collation, the row-hash seed (and for facts
    that will be remembered, whether ON CONFLICT has an arbiter: a lone run asks when it merges)."""
    if facts.target_read:
        return facts
    from pgstage.pipeline import known   # (it imports the staging step: a run with nothing to load never gets here)

    found = target.existing_columns(conn, spec)
    seed = known.session_seed(conn, spec) if target.keeps_row_hash(found) else None
    upserts = (facts.snapshot is not None and found is not None and bool(spec.pipeline.key)
               and target.upsert_arbiter(conn, spec))
    return replace(facts, target_read=True, found=found, collation=transform.case_collation(conn), seed=seed,
                   upserts=upserts)


def current(conn: psycopg.Connection[Any], spec: Spec, facts: Resolved) -> bool:
    """Whether `facts` still describe the catalog (always False for facts read without a fingerprint)."""
    return facts.snapshot is not None and snapshot(conn, spec) == facts.snapshot


def _checked_types(conn: psycopg.Connection[Any], spec: Spec) -> dict[str, transform.ColumnType]:
    types = transform.resolve_types(conn, spec)
    target.check(conn, spec, types)
    check_references(conn, spec)
    return types


def check_references(conn: psycopg.Connection[Any], spec: Spec) -> None:
    """Every referenced table and column must exist before anything is staged (exit 2)."""
    problems = []
    refs = [(f"columns.{n}.references", parse_reference(c.references)) for n, c in spec.columns.items() if c.references]
    refs += [(f"references.{n}", parse_reference(r.to)) for n, r in spec.references.items()]
    for where, ref in refs:
        found = execute(conn, sql.SQL(
            "SELECT array_agg(a.attname::text) FROM pg_attribute a WHERE a.attrelid = to_regclass(%s)"
            " AND a.attnum > 0 AND NOT a.attisdropped"), (qualified(ref.schema_, ref.table),),
            label="validate: references").fetchone()
        existing = (found[0] if found else None) or []
        if not existing:
            problems.append(f"{where}: table {ref.schema_}.{ref.table} does not exist")
        else:
            problems += [f"{where}: {ref.schema_}.{ref.table} has no column {c!r}" for c in ref.columns if c not in existing]
    if problems:
        raise SpecError(f"{spec.path or 'spec'}: referenced tables do not match", problems=tuple(problems),
                        hint="create the referenced table first, or fix the reference")
