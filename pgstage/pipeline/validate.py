"""Validate: one set-based pass over a staging table that yields typed values and every reason.

The pass is a stack of subqueries, each fenced with OFFSET 0 so PostgreSQL cannot inline a
level into the next and evaluate an expression twice: clean → normalize → parse → cast →
reasons. Its result, the `checked` table, holds the typed target values and a `_reasons`
array per record; an empty array means valid. Rejects and the merge both read it, so no
rule is ever evaluated twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute
from pgstage.pipeline import transform
from pgstage.pipeline.stage import LEDGER_SCHEMA, StagedBatch
from pgstage.pipeline.transform import ColumnType
from pgstage.spec import ColumnSpec, Spec


@dataclass(frozen=True)
class Checked:
    """A validated batch: its table of typed values, and how many records were rejected by rules."""

    staged: StagedBatch
    table: str
    rejected_by_rules: int

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(LEDGER_SCHEMA, self.table)

    @property
    def staged_rejected(self) -> int:
        """Records rejected in this batch: quarantined by staging or failing a rule."""
        return len(self.staged.quarantined) + self.rejected_by_rules


def _reason(column: str, rule: str, message: sql.Composable) -> sql.Composable:
    return sql.SQL("jsonb_build_object('column', {}, 'rule', {}, 'message', {})").format(
        sql.Literal(column), sql.Literal(rule), message)


def _rules(name: str, column: ColumnSpec, kind: ColumnType, required: bool) -> list[sql.Composable]:
    """One `CASE WHEN failed THEN reason END` per rule, over level-4 columns n_, ok_, v_."""
    n, ok, v = (sql.Identifier(f"{p}_{name}") for p in ("n", "ok", "v"))
    rules: list[sql.Composable] = []

    def rule(condition: sql.Composable, rule_name: str, message: sql.Composable) -> None:
        rules.append(sql.SQL("CASE WHEN {} THEN {} END").format(condition, _reason(name, rule_name, message)))

    rule(sql.SQL("NOT {}").format(ok), "type", transform.type_message(n, column, kind))
    if required:
        rule(sql.SQL("{} IS NULL").format(n), "required", sql.Literal("missing value"))
    special = transform.special_pattern(column, kind)
    if special:
        rule(sql.SQL("{} AND {} ~* {}").format(ok, n, sql.Literal(special)), "special",
             sql.SQL("quote_literal({}) || ' is a special input value, not data (allow_special = true accepts it)'").format(n))
    if column.min is not None:
        rule(sql.SQL("{} < {}").format(v, sql.Literal(column.min)), "min",
             sql.SQL("{}::text || {}").format(v, sql.Literal(f" is below the minimum {column.min:g}")))
    if column.max is not None:
        rule(sql.SQL("{} > {}").format(v, sql.Literal(column.max)), "max",
             sql.SQL("{}::text || {}").format(v, sql.Literal(f" is above the maximum {column.max:g}")))
    if column.regex is not None:
        rule(sql.SQL("{} !~ {}").format(n, sql.Literal(column.regex)), "regex",
             sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(f" does not match {column.regex}")))
    if column.in_ is not None:
        accepted = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(a) for a in column.in_))
        rule(sql.SQL("{} <> ALL({})").format(n, accepted), "in",
             sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(f" is not one of {', '.join(column.in_)}")))
    return rules


def build_check(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, table: str) -> sql.Composed:
    """CREATE the checked table for one staged file (pure: returns SQL, runs nothing)."""
    keys = set(spec.pipeline.key)
    columns = {name: c for name, c in spec.columns.items() if c.from_ is not None}
    ids = {name: {p: sql.Identifier(f"{p}_{name}") for p in ("t", "n", "p", "ok", "v")} for name in columns}
    rec = sql.Identifier("_rec")

    def level(items: list[sql.Composable], source: sql.Composable) -> sql.Composable:
        return sql.SQL("(SELECT {} FROM {} OFFSET 0)").format(sql.SQL(", ").join([rec, *items]), source)

    l1 = level([sql.SQL("{} AS {}").format(transform.clean(staged.column(c.from_ or ""), c, spec.source.null), ids[n]["t"])
                for n, c in columns.items()], staged.ident)
    l2 = level([sql.SQL("{} AS {}").format(transform.normalize(ids[n]["t"], c), ids[n]["n"]) for n, c in columns.items()],
               sql.SQL("{} l1").format(l1))
    l3_items: list[sql.Composable] = []
    for n, c in columns.items():
        l3_items.append(ids[n]["n"])
        p = transform.parsed(ids[n]["n"], c)
        l3_items.append(sql.SQL("{} AS {}").format(p if p is not None else sql.SQL("NULL::timestamptz"), ids[n]["p"]))
    l3 = level(l3_items, sql.SQL("{} l2").format(l2))
    l4_items: list[sql.Composable] = []
    for n, c in columns.items():
        p_ref = ids[n]["p"] if c.format else None
        ok = transform.valid(ids[n]["n"], p_ref, c, types[n])
        l4_items += [ids[n]["n"], sql.SQL("{} AS {}").format(ok, ids[n]["ok"]),
                     sql.SQL("CASE WHEN {} THEN {} END AS {}").format(
                         ok, transform.cast(ids[n]["n"], p_ref, c, types[n]), ids[n]["v"])]
    l4 = level(l4_items, sql.SQL("{} l3").format(l3))
    reasons: list[sql.Composable] = []
    for n, c in columns.items():
        reasons += _rules(n, c, types[n], required=c.required or n in keys)
    reasons_expr = (sql.SQL("array_remove(ARRAY[{}]::jsonb[], NULL)").format(sql.SQL(", ").join(reasons))
                    if reasons else sql.SQL("'{}'::jsonb[]"))
    outputs = [sql.SQL("{} AS {}").format(ids[n]["v"], sql.Identifier(n)) for n in columns]
    return sql.SQL("CREATE UNLOGGED TABLE {} AS SELECT {}, {} AS _reasons FROM {} l4").format(
        sql.Identifier(LEDGER_SCHEMA, table), sql.SQL(", ").join([rec, *outputs]), reasons_expr, l4)


def raw_keys(fields: tuple[str, ...]) -> list[str]:
    """JSON keys for a record's raw values: the header names, made unique (`note`, `note#2`)."""
    seen: dict[str, int] = {}
    keys = []
    for name in fields:
        seen[name] = seen.get(name, 0) + 1
        keys.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return keys


def build_rejects(staged: StagedBatch, checked_table: str) -> sql.Composed:
    """INSERT the rule rejects of a checked table into pgstage.rejects, raw values from staging."""
    names = sql.SQL(", ").join(sql.Literal(f) for f in raw_keys(staged.header.fields))
    values = sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(f"f{i + 1}")) for i in range(len(staged.header.fields)))
    return sql.SQL(
        "INSERT INTO pgstage.rejects (run_id, file, batch_no, record, raw, reasons)"
        " SELECT %(run_id)s, %(file)s, %(batch_no)s, c._rec, jsonb_object(ARRAY[{}]::text[], ARRAY[{}]::text[]), to_jsonb(c._reasons)"
        " FROM {} c JOIN {} s USING (_rec) WHERE cardinality(c._reasons) > 0").format(
        names, values, sql.Identifier(LEDGER_SCHEMA, checked_table), staged.ident)


def check(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, table: str,
          run_id: int) -> Checked:
    """Run the validation pass and record its rejects (with the batch's quarantined records).

    The caller wraps this and the batch's ledger row in one transaction, so a crash never
    leaves rejects without their batch (or the reverse).
    """
    execute(conn, build_check(spec, types, staged, table), label=f"validate {staged.source.name}")
    params = {"run_id": run_id, "file": staged.source.name, "batch_no": staged.batch_no}
    rejected = execute(conn, build_rejects(staged, table), params, label="validate: rejects").rowcount
    if staged.quarantined:
        with conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO pgstage.rejects (run_id, file, batch_no, record, raw, reasons)"
                " VALUES (%s, %s, %s, %s, jsonb_build_object('_record', %s::text),"
                " jsonb_build_array(jsonb_build_object('column', NULL, 'rule', 'parse', 'message', %s::text)))",
                [(run_id, staged.source.name, staged.batch_no, q.record, q.raw, q.reason) for q in staged.quarantined])
    return Checked(staged, table, rejected)
