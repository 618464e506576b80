"""Validate: one set-based pass over a staging table that yields typed values and every reason.

The pass is a stack of subqueries, each fenced so PostgreSQL cannot inline a level into the
next and evaluate an expression twice: clean → normalize → parse → cast → reasons. The fence
is a call of `pgstage.fence()`, a volatile but parallel-safe function that the planner
inlines to a constant only after it has decided not to flatten the subquery. `OFFSET 0`
fences too, but it also stops parallel query at the first level, and expression evaluation
is most of the pass: with the function fence the whole stack runs in parallel workers.

Its result, the `checked` table, holds the typed target values and a `_reasons` array per
record, NULL when the record is valid. The rejected records are then moved from it to
`pgstage.rejects`, and the merge reads the valid rows that remain: no rule is ever
evaluated twice.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

from pgstage.db import execute, execute_many
from pgstage.pipeline import known, partition, transform
from pgstage.pipeline._cast_first import MAX_ATTEMPTS, CastLuck, CastPlan, candidates, culprit
from pgstage.names import KNOWN, LEDGER_SCHEMA, NO_AUTOVACUUM, ROW_HASH
from pgstage.pipeline.stage import StagedBatch
from pgstage.pipeline.transform import ColumnType
from pgstage.errors import DATA_EXCEPTION, INTEGRITY_VIOLATION, DatabaseError
from pgstage.spec import ColumnSpec, Reference, Spec, parse_reference


# What the planner must believe for the pass to run in parallel workers: it prices our
# expressions at a fraction of their real cost (a regex or a timestamp parse is ~1 µs),
# so moving a row from a worker to the leader looks dearer than computing it.
PARALLEL_SETTINGS = (("parallel_setup_cost", "100"), ("parallel_tuple_cost", "0.001"))


@dataclass(frozen=True)
class Checked:
    """A validated batch: its table of typed values, and how many records were rejected by rules."""

    staged: StagedBatch
    table: str
    rejected_by_rules: int
    known: int = 0            # records known unchanged (see pipeline/known.py), in the table as key + version
    hashed: bool = False      # the table has `_row_hash`, which the merge writes
    # The least and greatest value (as text) of the key's first varying column among the rows
    # kept, found by the scan that looks for rejects (see `range_key`); None when not sought.
    key_range: tuple[str | None, str | None] | None = None

    @property
    def valid(self) -> int:
        return self.staged.read - self.staged_rejected

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(LEDGER_SCHEMA, self.table)

    @property
    def staged_rejected(self) -> int:
        """Records rejected in this batch: quarantined by staging or failing a rule."""
        return len(self.staged.quarantined) + self.rejected_by_rules


def _reason(column: str | None, rule: str, message: sql.Composable) -> sql.Composable:
    return sql.SQL("jsonb_build_object('column', {}, 'rule', {}, 'message', {})").format(
        sql.Literal(column), sql.Literal(rule), message)


@dataclass(frozen=True)
class Rule:
    """A rule of one column: the SQL that is true when a row fails it, and the reason to record then."""

    condition: sql.Composable
    reason: sql.Composable


# l5's flag that some column with a special-word rule may hold one (see `transform.may_be_special_any`),
# computed from this many such columns on: for one, its own test is the same call.
SPECIAL_CHARS = sql.Identifier("_special_chars")
SHARED_SPECIAL_TEST_MIN = 2


def always_valid(column: ColumnSpec, kind: ColumnType) -> bool:
    """Whether every text is valid input for the column (`text`): it has no type rule and no `_ok_` column.

    Its type rule would be `NOT true` for every row, evaluated and carried through the levels
    like any other (three such columns: ~0.05 µs a row of a 3.6 µs pass) to never fail.
    """
    return transform.validity(column, kind) == "text"


# Integer types, whose values compare with an integer literal without being converted to numeric.
_INTEGER_TYPES = ("smallint", "integer", "bigint")


def bound(limit: float, kind: ColumnType) -> sql.Composable:
    """A min/max limit as the literal to compare the typed value with.

    A whole limit of an integer column is an integer literal: `v < 0.0` converts every v to
    numeric before comparing (`int8_numeric`, `numeric_lt`), `v < 0` compares integers. The
    same rows pass: an integer is below a whole number exactly when it is below it as numeric.
    The number is the one PostgreSQL reads from the float's literal (its shortest repr, which
    for 2.0**63 is 9.223372036854776e+18, not 9223372036854775808), not the float's binary value.
    """
    if kind.name in _INTEGER_TYPES and math.isfinite(limit):
        written = Decimal(repr(limit))
        if written == written.to_integral_value():
            return sql.Literal(int(written))
    return sql.Literal(limit)


def _rules(name: str, column: ColumnSpec, kind: ColumnType, required: bool, shared_test: bool = False,
           judged: bool = True) -> list[Rule]:
    """The column's rules, over the columns _n_ (normalized text), _ok_ (valid input) and the typed value.

    `shared_test`: l5 has `SPECIAL_CHARS`, one test of every special-word column's text, and
    the special-word rule looks at its own column only where that test passed.
    `judged`: the pass has an `_ok_` column for it; else every value the pass gets past is
    valid input (see `build_check`'s `unjudged`), and there is no type rule.
    """
    n, ok, v = sql.Identifier(f"_n_{name}"), sql.Identifier(f"_ok_{name}"), sql.Identifier(name)
    rules: list[Rule] = []

    def rule(condition: sql.Composable, rule_name: str, message: sql.Composable) -> None:
        rules.append(Rule(condition, _reason(name, rule_name, message)))

    if judged:
        rule(sql.SQL("NOT {}").format(ok), "type", transform.type_message(n, column, kind))
    if required:
        rule(sql.SQL("{} IS NULL").format(n), "required", sql.Literal("missing value"))
    special = transform.special_pattern(column, kind)
    if special:
        # Every special word has letters other than ISO 8601's T and Z, and most values have none:
        # the cheap test first.
        rule(sql.SQL("{0}{4}CASE WHEN {1} THEN {2} ~* {3} ELSE false END").format(
            sql.SQL("{} AND ").format(ok) if judged else sql.SQL(""), transform.may_be_special(n), n, sql.Literal(special),
            sql.SQL("{} AND ").format(SPECIAL_CHARS) if shared_test else sql.SQL("")), "special",
             sql.SQL("quote_literal({}) || ' is a special input value, not data (allow_special = true accepts it)'").format(n))
    if column.min is not None:
        rule(sql.SQL("{} < {}").format(v, bound(column.min, kind)), "min",
             sql.SQL("{}::text || {}").format(v, sql.Literal(f" is below the minimum {column.min:g}")))
    if column.max is not None:
        rule(sql.SQL("{} > {}").format(v, bound(column.max, kind)), "max",
             sql.SQL("{}::text || {}").format(v, sql.Literal(f" is above the maximum {column.max:g}")))
    if column.regex is not None:
        rule(sql.SQL("{} !~ {}").format(n, sql.Literal(column.regex)), "regex",
             sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(f" does not match {column.regex}")))
    if column.in_ is not None:
        accepted = sql.SQL("ARRAY[{}]::text[]").format(sql.SQL(", ").join(sql.Literal(a) for a in column.in_))
        rule(sql.SQL("{} <> ALL({})").format(n, accepted), "in",
             sql.SQL("quote_literal({}) || {}").format(n, sql.Literal(f" is not one of {', '.join(column.in_)}")))
    return rules


def build_check(spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, table: str,
                context: "Context | None" = None, *, known_table: str | None = None,
                all_known: bool = False, cast_first: CastPlan | None = None) -> sql.Composed:
    """CREATE the checked table for one staged batch (pure: returns SQL, runs nothing).

    Levels, each a subquery fenced by `pgstage.fence()` so no expression is inlined twice:
    l1 clean → l2 normalize → l3 validity (and `format` parses) → l4 typed values (a parsed
    column's validity) → l5 the values under target names (a parsed column's cast) → l6 one
    boolean per rule → the reasons, built only for rows where some rule failed.
    Records listed in `known_table` are not validated but appended as they are, key and
    version only (see pipeline/known.py); with `all_known` there is nothing else to validate.
    With a `cast_first` plan, values the cast alone can judge (`transform.cast_raises`) are
    cast without being checked first, except in the plan's checked columns, and the plan's
    refused values are rejected uncast: the statement fails on the first other value that is
    not valid input, and `check` learns from it (see pipeline/_cast_first.py).
    """
    context = context or Context()
    # Key columns are required; so is the partition column of a run that replaces a partition.
    keys = set(spec.pipeline.key) | ({context.partition.column} if context.partition else set())
    columns = {name: c for name, c in spec.columns.items() if c.from_ is not None}
    # Internal names start with "_", which spec column names may not: no collision possible.
    ids = {name: {p: sql.Identifier(f"_{p}_{name}") for p in ("t", "n", "p", "ok", "v")} for name in columns}
    rec = sql.Identifier("_rec")
    raw = sql.Identifier("_raw_record")
    hashed = context.row_hash_seed is not None
    carried: list[sql.Composable] = [rec, *([raw] if spec.load.raw_column else []),
                                     *([sql.Identifier(ROW_HASH)] if hashed else [])]
    # A rejected record's raw values go to pgstage.rejects: carried along and turned into JSON
    # only for the rows that fail, so the rejects need no join with staging. A JSON Lines record
    # is one datum already; a CSV record's fields are carried as they are (`_src_1`, …): packing
    # them into an array for every row took 0.35 µs of a 5.2 µs pass, passing them 0.1 µs.
    src_fields: list[tuple[sql.Composable, sql.Identifier]] = []
    if spec.load.raw_column:
        reject_raw: sql.Composable = raw
    elif staged.kind == "jsonl":
        src_fields = [(staged.raw_values(sql.Identifier("s")), sql.Identifier("_src"))]
        reject_raw = staged.raw_from_values(src_fields[0][1])
    else:
        src_fields = [(sql.SQL("s.{}").format(sql.Identifier(f"f{i + 1}")), sql.Identifier(f"_src_{i + 1}"))
                      for i in range(len(staged.header.fields))]
        reject_raw = staged.raw_from_values(sql.SQL("ARRAY[{}]::text[]").format(
            sql.SQL(", ").join(name for _, name in src_fields)))
    passed = [*carried, *(name for _, name in src_fields)]

    def level(items: list[sql.Composable], source: sql.Composable, alias: str) -> sql.Composable:
        return sql.SQL("(SELECT {}, pgstage.fence() AS _fence FROM {}) {}").format(
            sql.SQL(", ").join([*passed, *items]), source, sql.Identifier(alias))

    def named(expr: sql.Composable, name: str, part: str) -> sql.Composable:
        return sql.SQL("{} AS {}").format(expr, ids[name][part])

    l1_items: list[sql.Composable] = [named(transform.clean(staged.column(c.from_ or ""), c, spec.source.null), n, "t")
                                      for n, c in columns.items()]
    records: sql.Composable = staged.rows()
    if all_known:
        records = sql.SQL("(SELECT * FROM {} WHERE false)").format(staged.ident)
    elif known_table is not None:
        records = sql.SQL("(SELECT * FROM {} s WHERE NOT EXISTS (SELECT 1 FROM {} k WHERE k._rec = s._rec))").format(
            records, sql.Identifier(LEDGER_SCHEMA, known_table))
    extra: list[sql.Composable] = []
    if spec.load.raw_column:  # the whole record, unknown fields included, kept in the target
        extra.append(sql.SQL("{} AS {}").format(staged.raw_record(sql.Identifier("s")), raw))
    extra += [sql.SQL("{} AS {}").format(expr, name) for expr, name in src_fields]
    if context.row_hash_seed is not None:
        extra.append(sql.SQL("{} AS {}").format(known.row_hash(spec, staged, "s", context.row_hash_seed),
                                                sql.Identifier(ROW_HASH)))
    l1_source = sql.SQL("(SELECT {} FROM {} s) s").format(sql.SQL(", ").join([sql.SQL("s.*"), *extra]), records)
    l1 = level(l1_items, l1_source, "l1")
    l2 = level([named(transform.normalize(ids[n]["t"], c, context.collation), n, "n") for n, c in columns.items()], l1, "l2")
    l3_items: list[sql.Composable] = []
    parses = {n: transform.parsed(ids[n]["n"], c) for n, c in columns.items()}
    # Columns whose validity would be the constant true in this pass: text, and a column cast first
    # with nothing to guard (its cast judges every value by failing the statement). They get no
    # `_ok_` column and no type rule, which could never fail but would be evaluated and passed on.
    unjudged = {n for n, c in columns.items()
                if always_valid(c, types[n]) or (parses[n] is None and cast_first is not None
                                                 and n not in cast_first.checked and transform.cast_raises(c, types[n])
                                                 and not transform.guarded(c, types[n], cast_first.refused.get(n, ())))}
    for n, c in columns.items():
        p = parses[n]
        if n in unjudged:
            l3_items.append(ids[n]["n"])
        elif p is None and cast_first is not None and n not in cast_first.checked and transform.cast_raises(c, types[n]):
            guard = transform.cast_guard(ids[n]["n"], c, types[n], cast_first.refused.get(n, ()))
            l3_items += [ids[n]["n"], named(guard, n, "ok")]   # the cast in l4 judges the rest
        elif p is None:
            l3_items += [ids[n]["n"], named(transform.valid(ids[n]["n"], None, c, types[n]), n, "ok")]
        else:  # a `format` or money column: parse once here, judge and cast from the parsed value in l4
            l3_items += [ids[n]["n"], named(p, n, "p")]
    l3 = level(l3_items, l2, "l3")
    l4_items: list[sql.Composable] = []
    for n, c in columns.items():
        if n in unjudged:
            l4_items += [ids[n]["n"], named(transform.cast(ids[n]["n"], None, c, types[n]), n, "v")]
        elif parses[n] is not None:
            # Judged here from the parsed value, cast in l5: `CASE WHEN <validity> THEN <cast>` in
            # one level would evaluate the validity twice (a money column's is ~0.5 µs a row).
            l4_items += [ids[n]["n"], ids[n]["p"], named(transform.valid(ids[n]["n"], ids[n]["p"], c, types[n]), n, "ok")]
        else:
            l4_items += [ids[n]["n"], ids[n]["ok"], named(sql.SQL("CASE WHEN {} THEN {} END").format(
                ids[n]["ok"], transform.cast(ids[n]["n"], None, c, types[n])), n, "v")]
    l4 = level(l4_items, l3, "l4")
    # l5: the typed values under their target names (consts too), for checks and table rules.
    l5_items: list[sql.Composable] = [*(ids[n]["n"] for n in columns),
                                      *(ids[n]["ok"] for n in columns if n not in unjudged)]
    for name, column in spec.columns.items():
        value: sql.Composable
        if column.from_ is None:
            value = transform.const(column, types[name])
        elif parses[name] is not None:
            value = sql.SQL("CASE WHEN {} THEN {} END").format(
                ids[name]["ok"], transform.cast(ids[name]["n"], ids[name]["p"], column, types[name]))
        else:
            value = ids[name]["v"]
        l5_items.append(sql.SQL("{} AS {}").format(value, sql.Identifier(name)))
    # Two or more columns with a special-word rule: one regex call tests all their texts for a
    # character no date or number of the usual shapes has (the rules' cheap test, once a row).
    special = [n for n, c in columns.items() if transform.special_pattern(c, types[n])]
    shared_test = len(special) >= SHARED_SPECIAL_TEST_MIN
    if shared_test:
        l5_items.append(sql.SQL("{} AS {}").format(
            transform.may_be_special_any([ids[n]["n"] for n in special]), SPECIAL_CHARS))
    l5 = level(l5_items, l4, "l5")
    rules: list[Rule] = [rule for n, c in columns.items()
                         for rule in _rules(n, c, types[n], c.required or n in keys, shared_test and n in special,
                                            judged=n not in unjudged)]
    rules += table_rules(spec, types, context)
    failed = [sql.Identifier(f"_failed_{i}") for i in range(len(rules))]
    names = [sql.Identifier(n) for n in spec.columns]
    l6_items: list[sql.Composable] = [*(ids[n]["n"] for n in columns), *names,
                                      *(sql.SQL("{} AS {}").format(r.condition, f) for r, f in zip(rules, failed))]
    l6 = level(l6_items, l5, "l6")
    reasons: sql.Composable
    rejected_raw: sql.Composable
    if rules:
        any_failed = sql.SQL(" OR ").join(failed)
        reasons = sql.SQL("CASE WHEN {} THEN array_remove(ARRAY[{}]::jsonb[], NULL) END").format(
            any_failed,
            sql.SQL(", ").join(sql.SQL("CASE WHEN {} THEN {} END").format(f, r.reason) for r, f in zip(rules, failed)))
        rejected_raw = sql.SQL("CASE WHEN {} THEN {} END").format(any_failed, reject_raw)
    else:
        reasons, rejected_raw = sql.SQL("NULL::jsonb[]"), sql.SQL("NULL::jsonb")
    outputs: list[sql.Composable] = [*carried, *(sql.Identifier(n) for n in columns)]
    checked = sql.SQL("SELECT {}, {} AS _reasons, {} AS _rejected_raw, false AS {} FROM {}").format(
        sql.SQL(", ").join(outputs), reasons, rejected_raw, sql.Identifier(KNOWN), l6)
    if known_table is not None:
        kept = set(known.kept_columns(spec))
        appended = [rec, *([sql.SQL("NULL::jsonb")] if spec.load.raw_column else []),
                    *([sql.SQL("NULL::bigint")] if hashed else []),
                    *(sql.Identifier(n) if n in kept else sql.SQL("NULL::{}").format(types[n].cast) for n in columns),
                    sql.SQL("NULL::jsonb[]"), sql.SQL("NULL::jsonb"), sql.SQL("true")]
        checked = sql.SQL("{} UNION ALL SELECT {} FROM {}").format(
            checked, sql.SQL(", ").join(appended), sql.Identifier(LEDGER_SCHEMA, known_table))
    return sql.SQL("CREATE UNLOGGED TABLE {}" + NO_AUTOVACUUM + " AS {}").format(sql.Identifier(LEDGER_SCHEMA, table), checked)


@dataclass(frozen=True)
class Context:
    """What the validation pass needs to know about the database, found once per run.

    `row_hash_seed`: hash each record into `_row_hash` (the target keeps pgstage's row hash);
    `known_rows`: the target's hashes may be compared with the records' (see pipeline/known.py);
    `staged`: set once the run has staged its last batch (see `check`); None: staged already.
    """

    collation: str | None = None
    target_exists: bool = False
    row_hash_seed: int | None = None
    known_rows: bool = False
    luck: CastLuck = field(default_factory=CastLuck)
    staged: threading.Event | None = None
    partition: partition.Window | None = None   # replace_partition: records outside it are rejected


def table_rules(spec: Spec, types: dict[str, ColumnType], context: Context) -> list[Rule]:
    """Rules over whole rows and other tables: references, uniqueness, custom checks.

    References and target lookups are `IN (subquery)` so that PostgreSQL hashes the other
    table once per batch instead of probing it per row.
    """
    rules: list[Rule] = []
    for name, column in spec.columns.items():
        if column.references:
            ref = parse_reference(column.references)
            rules.append(_reference_rule(name, [name], ref))
    for ref_name, composite in spec.references.items():
        rules.append(_reference_rule(ref_name, list(composite.cols), parse_reference(composite.to)))
    for name, column in spec.columns.items():
        if column.unique:
            rules.append(_unique_rule(spec, name, context))
    if context.partition is not None:
        w = context.partition
        rules.append(Rule(sql.SQL("NOT coalesce({}, true)").format(partition.inside(w)),
                          _reason(w.column, "partition", partition.outside_reason(w))))
    if spec.checks:
        # Imported here: sqlglot, which parses the checks, is a seventh of the CLI's start-up.
        from pgstage.checks import compile_check
    for check_name, expression in spec.checks.items():
        compiled = compile_check(check_name, expression, {n: types[n].name for n in spec.columns})
        rules.append(Rule(sql.SQL("NOT coalesce(({}), true)").format(compiled),
                          _reason(None, check_name, sql.Literal(f"check failed: {expression}"))))
    return rules


def _reference_rule(label: str, cols: list[str], ref: Reference) -> Rule:
    mine = sql.SQL(", ").join(sql.Identifier(c) for c in cols)
    theirs = sql.SQL(", ").join(sql.Identifier(c) for c in ref.columns)
    present = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)) for c in cols)
    target = f"{ref.schema_}.{ref.table}({', '.join(ref.columns)})"
    values = sql.SQL(" || ', ' || ").join(sql.SQL("quote_literal({})").format(sql.Identifier(c)) for c in cols)
    condition = sql.SQL("{} AND NOT coalesce(({}) IN (SELECT {} FROM {}), false)").format(
        present, mine, theirs, sql.Identifier(ref.schema_, ref.table))
    column = cols[0] if len(cols) == 1 else None
    return Rule(condition, _reason(column, "references" if column else label, sql.SQL("{} || {}").format(
        values, sql.Literal(f" is not in {target}"))))


def _unique_rule(spec: Spec, name: str, context: Context) -> Rule:
    """The value repeats under another key within the batch, or exists in the target under another key."""
    col = sql.Identifier(name)
    key_text = sql.SQL(" || chr(31) || ").join(sql.SQL("{}::text").format(sql.Identifier(k)) for k in spec.pipeline.key)
    window = sql.SQL("(min({k}) OVER (PARTITION BY {c}) IS DISTINCT FROM max({k}) OVER (PARTITION BY {c}))").format(
        k=key_text, c=col)
    condition: sql.Composable = sql.SQL("{} IS NOT NULL AND {}").format(col, window)
    if context.target_exists:
        keys = sql.SQL(", ").join(sql.Identifier(k) for k in spec.pipeline.key)
        target = sql.Identifier(*spec.target)
        condition = sql.SQL("{} IS NOT NULL AND ({} OR (coalesce({} IN (SELECT {} FROM {}), false)"
                            " AND NOT coalesce(({}, {}) IN (SELECT {}, {} FROM {}), false)))").format(
            col, window, col, col, target, col, keys, col, keys, target)
    return Rule(condition, _reason(name, "unique", sql.SQL("quote_literal({}) || {}").format(
        col, sql.Literal(" is not unique: another key has it in this load or in the target"))))


def build_rejects(staged: StagedBatch, checked_table: str, run_id: int) -> sql.Composed:
    """MOVE the rule rejects of a checked table into pgstage.rejects (their raw values came along).

    Afterwards the checked table holds valid rows only, so the merge reads it unfiltered and
    the planner estimates its size from its pages (a `_reasons IS NULL` filter on a table that
    was never analyzed is guessed at 0.5% of the rows, which makes it pick nested loops). A
    clean batch costs one scan that finds nothing. Everything is a literal and the statement
    runs without parameters: file names may hold a `%`, which psycopg would read as a placeholder.
    """
    return sql.SQL(
        "WITH c AS (DELETE FROM {} WHERE _reasons IS NOT NULL RETURNING _rec, _reasons, _rejected_raw)"
        " INSERT INTO pgstage.rejects (run_id, file, batch_no, record, raw, reasons)"
        " SELECT {}, {}, {}, c._rec, c._rejected_raw, to_jsonb(c._reasons) FROM c").format(
        sql.Identifier(LEDGER_SCHEMA, checked_table), sql.Literal(run_id), sql.Literal(staged.source.name),
        sql.Literal(staged.batch_no))


# Type categories whose values min() and max() order (numbers, strings, dates and times).
_ORDERED = ("N", "S", "D")


def range_key(spec: Spec, types: dict[str, ColumnType]) -> str | None:
    """The key column whose range tells batches apart (the first varying one, if min/max order it), or None."""
    varying = [k for k in spec.pipeline.key if spec.columns[k].const is None]
    if not varying or types[varying[0]].category not in _ORDERED:
        return None
    return varying[0]


def build_tally(checked_table: str, key: str | None) -> sql.Composed:
    """How many rows of a checked table failed a rule, and the key range of the others: one scan.

    A clean batch then needs no `build_rejects` (whose DELETE scans the table to find nothing),
    and the merge learns whether batches share keys from the ranges, without reading the
    checked tables again on the run's one session while the other cores wait.
    """
    table = sql.Identifier(LEDGER_SCHEMA, checked_table)
    if key is None:
        return sql.SQL("SELECT count(*) FILTER (WHERE _reasons IS NOT NULL), NULL::text, NULL::text FROM {}").format(table)
    return sql.SQL("SELECT count(*) FILTER (WHERE _reasons IS NOT NULL), (min({k}) FILTER (WHERE _reasons IS NULL))::text,"
                   " (max({k}) FILTER (WHERE _reasons IS NULL))::text FROM {}").format(table, k=sql.Identifier(key))


def fewer_workers_while_staging(conn: psycopg.Connection[Any]) -> None:
    """Half the parallel workers (at least one, if any) for the rest of this transaction.

    While the run's main session still stages, its COPY and screening are the path every
    later batch waits on, and a pass that takes every core delays them more than it gains
    (2M rows with 2% bad ones: the second batch was staged 1–2 s later, the run took 1.5 s
    longer). A pass started after the staging takes them all.
    """
    execute(conn, sql.SQL(
        "SELECT set_config('max_parallel_workers_per_gather', (CASE WHEN s > 0 THEN greatest(1, s / 2) ELSE 0 END)::text,"
        " true) FROM (SELECT current_setting('max_parallel_workers_per_gather')::int AS s) c"),
        label="validate: fewer workers while staging")


def check(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], staged: StagedBatch, table: str,
          run_id: int, context: Context | None = None) -> Checked:
    """Run the validation pass and record its rejects (with the batch's quarantined records).

    The caller wraps this and the batch's ledger row in one transaction, so a crash never
    leaves rejects without their batch (or the reverse).
    """
    context = context or Context()
    for name, value in PARALLEL_SETTINGS:   # SET LOCAL: ends with the caller's transaction
        execute(conn, sql.SQL("SELECT set_config(%s, %s, true)"), (name, value), label="validate: parallel")
    if context.staged is not None and not context.staged.is_set():
        fewer_workers_while_staging(conn)
    known_table, known_rows = None, 0
    seed_value = context.row_hash_seed
    if (context.known_rows and seed_value is not None and staged.read
            and known.worth_it(conn, spec, types, staged, seed_value, context.collation)):
        known_table = f"{staged.table}_known"
        known_rows = execute(conn, known.build_known(spec, types, staged, known_table, seed_value, context.collation),
                             label=f"validate: known rows {staged.source.name}").rowcount
    all_known = known_rows == staged.read
    plan = None if all_known or not candidates(spec, types) else context.luck.plan()
    attempts = 0
    while plan is not None:
        try:
            with conn.transaction():   # a savepoint: a failed cast undoes this attempt only
                execute(conn, build_check(spec, types, staged, table, context, known_table=known_table,
                                          all_known=all_known, cast_first=plan),
                        label=f"validate (cast first) {staged.source.name}")
            break
        except DatabaseError as exc:
            if exc.sqlstate_class not in (DATA_EXCEPTION, INTEGRITY_VIOLATION):
                raise
            attempts += 1
            found = culprit(conn, spec, types, staged, plan, exc, context.collation)
            if not found:
                context.luck.give_up()
            for column, bad in found:
                context.luck.learn(column, bad)
            plan = context.luck.plan() if attempts < MAX_ATTEMPTS else None
    if plan is None:
        execute(conn, build_check(spec, types, staged, table, context, known_table=known_table,
                                  all_known=all_known), label=f"validate {staged.source.name}")
    key = range_key(spec, types)
    tally = execute(conn, build_tally(table, key), label="validate: tally").fetchone()
    assert tally is not None
    rejected = 0
    if tally[0]:
        rejected = execute(conn, build_rejects(staged, table, run_id), label="validate: rejects").rowcount
    if known_table is not None:
        execute(conn, sql.SQL("DROP TABLE {}").format(sql.Identifier(LEDGER_SCHEMA, known_table)),
                label="validate: drop known")
    if staged.quarantined:
        execute_many(conn, sql.SQL(
            "INSERT INTO pgstage.rejects (run_id, file, batch_no, record, raw, reasons)"
            " VALUES (%s, %s, %s, %s, jsonb_build_object('_record', %s::text),"
            " jsonb_build_array(jsonb_build_object('column', NULL, 'rule', 'parse', 'message', %s::text)))"),
            [(run_id, staged.source.name, staged.batch_no, q.record, q.raw, q.reason) for q in staged.quarantined],
            label="validate: unreadable records")
    return Checked(staged, table, rejected, known=known_rows, hashed=seed_value is not None,
                   key_range=None if key is None else (tally[1], tally[2]))
