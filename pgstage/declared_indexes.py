"""A spec's `[indexes]`: the indexes its users' queries need, designed with the table.

```toml
[indexes]
orders_by_source = { columns = ["source", "ordered_at desc"] }
orders_by_email  = { columns = ["customer_email"], where = "customer_email is not null" }
```

A key names a column and an optional order (`asc`/`desc`, `nulls first`/`nulls last`),
checked by a pattern, never spliced: the name goes through `sql.Identifier` and the order
words are chosen here. A `where` predicate is parsed and rebuilt by `checks.py`, like a
`[checks]` entry, so no spec text reaches SQL unparsed. They are created with the target
(`target.ensure`) and added to an existing one by `pgstage migrate` with
`CREATE INDEX CONCURRENTLY`. Through `index_strategy` drop/rebuild they behave like any
other index of the target (`indexes.py`): a plain one is dropped and rebuilt from the
ledger, a partial or unique one is kept and maintained by the merge.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.spec import Spec

_KEY = re.compile(r"^\s*(?P<column>[^\s\x00][^\x00]*?)(?:\s+(?P<order>asc|desc))?"
                  r"(?:\s+nulls\s+(?P<nulls>first|last))?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class IndexKey:
    """One key of an index: a column and its order, split once from the spec's text."""

    column: str
    descending: bool = False
    nulls: str | None = None      # "first" | "last" | None (PostgreSQL's default for the order)

    def render(self) -> sql.Composable:
        order = " DESC" if self.descending else ""
        nulls = f" NULLS {self.nulls.upper()}" if self.nulls else ""
        return sql.SQL("{}{}").format(sql.Identifier(self.column), sql.SQL(order + nulls))


def parse_key(text: str) -> IndexKey:
    """`"ordered_at desc nulls last"` → IndexKey; ValueError for anything else."""
    found = _KEY.match(text) if isinstance(text, str) else None
    if not found:
        raise ValueError(f"{text!r} is not `column [asc|desc] [nulls first|last]`")
    return IndexKey(found["column"], (found["order"] or "").lower() == "desc",
                    found["nulls"].lower() if found["nulls"] else None)


def check_keys(keys: tuple[str, ...], columns: Mapping[str, str]) -> list[str]:
    """The problems of an index's key list against the target's columns (empty when fine)."""
    problems = []
    for text in keys:
        try:
            key = parse_key(text)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if key.column not in columns:
            problems.append(f"{key.column!r} is not a column of the target")
    return problems


def compile_where(name: str, where: str, columns: Mapping[str, str]) -> sql.Composable:
    """The `where` predicate as SQL, through the `[checks]` parser (SpecError when it is not one condition)."""
    from pgstage.checks import compile_check   # sqlglot only for a spec with a predicate

    return compile_check(f"indexes.{name}.where", where, columns)


def build_create(target: tuple[str, str], name: str, keys: tuple[str, ...], *, unique: bool = False,
                 where: sql.Composable | None = None, concurrently: bool = False) -> sql.Composed:
    """`CREATE [UNIQUE] INDEX [CONCURRENTLY] IF NOT EXISTS name ON target (keys) [WHERE predicate]` (pure)."""
    return sql.SQL("CREATE {unique}INDEX {concurrently}IF NOT EXISTS {name} ON {target} ({keys}){where}").format(
        unique=sql.SQL("UNIQUE " if unique else ""), concurrently=sql.SQL("CONCURRENTLY " if concurrently else ""),
        name=sql.Identifier(name), target=sql.Identifier(*target),
        keys=sql.SQL(", ").join(parse_key(k).render() for k in keys),
        where=sql.SQL(" WHERE {}").format(where) if where is not None else sql.SQL(""))


def build_drop(schema: str, name: str, *, concurrently: bool = False) -> sql.Composed:
    """`DROP INDEX [CONCURRENTLY] IF EXISTS schema.name` (pure)."""
    return sql.SQL("DROP INDEX {}IF EXISTS {}").format(sql.SQL("CONCURRENTLY " if concurrently else ""),
                                                     sql.Identifier(schema, name))


def index_state(conn: psycopg.Connection[Any], target: tuple[str, str], name: str) -> str | None:
    """`valid`, `invalid` (a CREATE INDEX CONCURRENTLY that died half way) or None when absent.

    An index of that name on another table of the schema counts as present: the name is
    taken there, and CREATE … IF NOT EXISTS would silently do nothing.
    """
    row = execute(conn, sql.SQL(
        "SELECT i.indisvalid AND i.indisready FROM pg_class ic JOIN pg_index i ON i.indexrelid = ic.oid"
        " JOIN pg_namespace n ON n.oid = ic.relnamespace WHERE n.nspname = %s AND ic.relname = %s"),
        (target[0], name), label="indexes: state").fetchone()
    if row is None:
        return None
    return "valid" if row[0] else "invalid"


def creates(spec: Spec, columns: Mapping[str, str], *, concurrently: bool = False) -> list[tuple[str, sql.Composed]]:
    """(name, CREATE INDEX) of every index the spec declares, in the spec's order (pure)."""
    found = []
    for name, declared in spec.indexes.items():
        where = compile_where(name, declared.where, columns) if declared.where is not None else None
        found.append((name, build_create(spec.target, name, declared.columns, unique=declared.unique, where=where,
                                         concurrently=concurrently)))
    return found
