"""Surrogate keys: `[pipeline] surrogate_key = { column = "id", kind = "uuid" | "hash" }`.

`uuid`: the target column defaults to `gen_random_uuid()`; merges never name it, so a row
keeps its id for its whole life, whatever upserts change. `hash`: computed in the merge from
the business key's typed values, so the same key always gets the same id, in any database.
Each value is rendered canonically (JSON text; a timestamptz in UTC, so neither DateStyle
nor TimeZone changes it) and prefixed by its length in characters: ("a", "bc") and
("ab", "c") hash `1:a2:bc` and `2:ab1:c`, never one string.
"""

from __future__ import annotations

from psycopg import sql

from pgstage.pipeline.transform import ColumnType
from pgstage.spec import Spec


def column(spec: Spec) -> str | None:
    """The surrogate key column, if the spec asks for one."""
    surrogate = spec.pipeline.surrogate_key
    return surrogate.column if surrogate else None


def computed(spec: Spec) -> str | None:
    """The surrogate column when the merge must compute it (kind hash); None for uuid (the default) or none."""
    surrogate = spec.pipeline.surrogate_key
    return surrogate.column if surrogate and surrogate.kind == "hash" else None


def _canonical(value: sql.Composable, kind: ColumnType) -> sql.Composable:
    if kind.name == "timestamp with time zone":
        value = sql.SQL("({} AT TIME ZONE 'UTC')").format(value)
    return sql.SQL("(to_json({}) #>> '{{}}')").format(value)


def hash_of(values: list[tuple[sql.Composable, ColumnType]]) -> sql.Composed:
    """md5 of the length-prefixed canonical texts of typed values, as a uuid (also scd2's `_scd_id`)."""
    parts = [sql.SQL("length({t}) || ':' || {t}").format(t=_canonical(value, kind)) for value, kind in values]
    return sql.SQL("md5({})::uuid").format(sql.SQL(" || ").join(parts))


def build_hash(spec: Spec, types: dict[str, ColumnType], alias: str) -> sql.Composed:
    """The hash id of the row `alias`'s business key: md5 of the length-prefixed canonical values, as a uuid."""
    return hash_of([(sql.Identifier(alias, key), types[key]) for key in spec.pipeline.key])


def ddl(spec: Spec) -> sql.Composed | None:
    """The target's surrogate column definition (the primary key), None without one."""
    surrogate = spec.pipeline.surrogate_key
    if surrogate is None:
        return None
    default = sql.SQL(" DEFAULT gen_random_uuid()") if surrogate.kind == "uuid" else sql.SQL("")
    return sql.SQL("{} uuid NOT NULL{} PRIMARY KEY").format(sql.Identifier(surrogate.column), default)
