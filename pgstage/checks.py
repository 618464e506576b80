"""Check expressions: a spec's `[checks]`, parsed and rebuilt so that no spec text reaches SQL unparsed.

A check is ONE boolean SQL expression over the target's column names (after transform), e.g.
`refunded_cents <= amount_cents`. The text is parsed with sqlglot (postgres dialect) and every
node must be on an allow-list: comparisons, AND/OR/NOT, IS, IN lists, BETWEEN, LIKE and
regex matches, arithmetic, CASE, casts, literals and a few pure functions. Statements,
subqueries, other functions (`now()` makes a check depend on the clock), comments and
parameters are refused, each with its position in the text.

The accepted tree is rendered back with every column swapped for a `sql.Identifier` and
every string for a literal built here, so the result is a psycopg `sql.Composed`. It never
contains a `%` (modulo becomes `mod()`, a `%` inside a string a Unicode escape), so it can
sit in a statement that is executed with parameters, where psycopg would read `%` as one.
"""

from __future__ import annotations

import difflib
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import cast

import sqlglot
from psycopg import sql
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from pgstage.errors import SpecError

_DIALECT = Postgres()

# Pure functions a check may call, by the node sqlglot parses them into, with the name users write.
ALLOWED_FUNCTIONS: dict[type[exp.Expression], str] = {
    exp.Lower: "lower", exp.Upper: "upper", exp.Trim: "btrim", exp.Length: "length", exp.Abs: "abs",
    exp.Coalesce: "coalesce", exp.Nullif: "nullif", exp.Round: "round", exp.TimestampTrunc: "date_trunc",
    exp.DateTrunc: "date_trunc", exp.Extract: "extract",
}
# Names some sqlglot versions parse as an unknown (Anonymous) function rather than the node above.
_ALLOWED_ANONYMOUS = frozenset({"btrim", "date_part"})
_ALLOWED_NAMES = ", ".join(sorted({*ALLOWED_FUNCTIONS.values(), *_ALLOWED_ANONYMOUS}))

# Nodes that are conditions whatever their operands are.
_PREDICATES: tuple[type[exp.Expression], ...] = (
    exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ, exp.NullSafeNEQ, exp.Is, exp.In, exp.Between,
    exp.Like, exp.ILike, exp.SimilarTo, exp.RegexpLike, exp.RegexpILike, exp.Boolean,
)
_CONNECTIVES: tuple[type[exp.Expression], ...] = (exp.And, exp.Or, exp.Not)

# Everything else a check may contain: operands, operators and the parts of allowed nodes.
_STRUCTURE: tuple[type[exp.Expression], ...] = (
    exp.Column, exp.Identifier, exp.Literal, exp.Null, exp.Paren, exp.Tuple, exp.Add, exp.Sub, exp.Mul, exp.Div,
    exp.Mod, exp.Neg, exp.Pow, exp.DPipe, exp.Case, exp.If, exp.Cast, exp.DataType, exp.DataTypeParam, exp.Interval,
)
_ALLOWED = (*_PREDICATES, *_CONNECTIVES, *_STRUCTURE, *ALLOWED_FUNCTIONS)

# A date part or interval unit (`extract(year from d)`) is a Var; anywhere else a Var is a stray word.
_UNIT_PARENTS = (exp.Extract, exp.Interval, exp.TimestampTrunc, exp.DateTrunc)
_STATEMENTS = (exp.Query, exp.DDL, exp.DML, exp.Command, exp.Set, exp.Use, exp.Transaction, exp.Commit,
               exp.Rollback, exp.Subquery)
_PARAMETER_TOKENS = (TokenType.PARAMETER, TokenType.PLACEHOLDER, TokenType.COLON)
_STATEMENT_TOKENS = (TokenType.SELECT, TokenType.WITH, TokenType.VALUES, TokenType.INSERT, TokenType.UPDATE,
                     TokenType.DELETE)
# A type name rendered by sqlglot that is safe to splice: words, a typmod, array brackets.
_WORD = re.compile(r"^[A-Za-z_]+$")
_INTERVAL_TEXT = re.compile(r"^[0-9A-Za-z .:+-]*$")
_TYPE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]*(\(\s*\d+\s*(,\s*\d+\s*)?\))?(\[\])*$")


class _Refused(Exception):
    """One problem in one check, with its 1-based position in the expression text."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


def compile_check(name: str, expression: str, columns: Mapping[str, str], *,
                  source: str | Path | None = None) -> sql.Composable:
    """The check as composable SQL over the target's columns; SpecError (exit 2) if it is not one condition.

    `columns` maps target column names to PostgreSQL type names (a bare boolean column is a
    condition); `source` (the spec file) prefixes the message.
    """
    try:
        return _compile(expression, columns)
    except _Refused as refused:
        where = f"{source}: " if source else ""
        raise SpecError(f"{where}checks.{name}: {refused.problem}",
                        hint="a check is one SQL condition over the target's columns, e.g."
                             " \"refunded_cents <= amount_cents\"; see docs/validation.md") from None


def validate_checks(spec_checks: Mapping[str, str], columns: Mapping[str, str], *,
                    source: str | Path | None = None,
                    locate: Callable[[str], str] | None = None) -> dict[str, sql.Composable]:
    """Compile every check; one SpecError lists all the problems of all the checks at once.

    `locate(name)` prefixes each problem with where the check is written (`spec.toml:14`).
    """
    compiled: dict[str, sql.Composable] = {}
    problems: list[str] = []
    for name, expression in spec_checks.items():
        try:
            compiled[name] = compile_check(name, expression, columns, source=source)
        except SpecError as exc:
            problems.append(f"{locate(name)}: {exc.message}" if locate else exc.message)
    if problems:
        raise SpecError(f"{source or 'spec'}: {len(problems)} problem(s) in [checks]", problems=tuple(problems),
                        hint="a check is one SQL condition over the target's columns; see docs/validation.md")
    return compiled


def _compile(text: str, columns: Mapping[str, str]) -> sql.Composable:
    if not isinstance(text, str) or not text.strip():
        raise _Refused("empty expression: write a condition such as \"amount_cents >= 0\"")
    tokens = _tokenize(text)
    _refuse_comments(text, tokens)
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            raise _Refused(f"';' at position {token.start + 1}: a check is one expression, not statements")
        if token.token_type in _PARAMETER_TOKENS:
            raise _Refused(f"parameters and placeholders are not allowed at position {token.start + 1}")
    try:
        trees = sqlglot.parse(text, dialect=_DIALECT)
    except ParseError as exc:
        raise _Refused(_syntax_problem(text, exc)) from None
    tree = cast(exp.Expression, trees[0]) if len(trees) == 1 else None
    if tree is None:
        raise _Refused("not one expression: write a single condition such as \"amount_cents >= 0\"")
    _refuse_nodes(text, tree, tokens, columns)
    if not _is_condition(tree, columns):
        raise _Refused(f"not a condition at position {_position(tree, tokens)}: a check must be true or false"
                       " for a row (e.g. \"amount_cents >= 0\")")
    return _render(tree)


def _tokenize(text: str) -> list[Token]:
    try:
        return _DIALECT.tokenize(text)
    except TokenError:
        # sqlglot's message carries no position: the longest prefix that still tokenizes ends at it.
        for end in range(len(text) - 1, -1, -1):
            try:
                _DIALECT.tokenize(text[:end])
            except TokenError:
                continue
            break
        else:
            end = 0
        raise _Refused(f"syntax error at position {end + 1}: an unterminated string, quoted name or comment")


def _refuse_comments(text: str, tokens: list[Token]) -> None:
    """Comments hide text from readers of the spec; anything the tokens do not cover is one."""
    covered = bytearray(len(text))
    for token in tokens:
        covered[token.start:token.end + 1] = b"\x01" * (token.end + 1 - token.start)
    for offset, char in enumerate(text):
        if not covered[offset] and not char.isspace():
            raise _Refused(f"comments are not allowed at position {offset + 1}")
    if any(token.comments for token in tokens):  # pragma: no cover - covered by the scan above
        raise _Refused("comments are not allowed")


def _syntax_problem(text: str, exc: ParseError) -> str:
    errors = exc.errors or [{}]
    first = errors[0]
    line, col, near = first.get("line"), first.get("col"), first.get("highlight") or ""
    if not isinstance(line, int) or not isinstance(col, int):
        return f"syntax error: {first.get('description') or exc}"
    # sqlglot reports the 1-based line and the column where the offending token ends.
    line_start = sum(len(part) + 1 for part in text.split("\n")[:line - 1])
    position = max(1, line_start + col - len(near) + 1)
    return f"syntax error at position {position}" + (f" near {near!r}" if near else ": the expression is incomplete")


def _refuse_nodes(text: str, tree: exp.Expression, tokens: list[Token], columns: Mapping[str, str]) -> None:
    """Walk in text order and refuse the first node that is not on the allow-list."""
    for item in tree.walk(bfs=False):
        node = cast(exp.Expression, item)  # sqlglot >= 30 types nodes as its base class Expr
        at = _position(node, tokens)
        if isinstance(node, _STATEMENTS):
            if node is tree:  # a whole statement starts at the first word
                at = tokens[0].start + 1 if tokens else 1
            kind = "subqueries are" if node is not tree else f"statements ({node.key.upper()}) are"
            raise _Refused(f"{kind} not allowed at position {at}: a check is one condition over the row's columns")
        if isinstance(node, (exp.Placeholder, exp.Parameter)):
            raise _Refused(f"parameters and placeholders are not allowed at position {at}")
        if isinstance(node, exp.Column):
            _check_column(node, at, columns)
        elif isinstance(node, exp.Var):
            if not isinstance(node.parent, _UNIT_PARENTS) or not _WORD.match(node.name):
                raise _Refused(f"unexpected word {node.name!r} at position {at}")
        elif isinstance(node, exp.Anonymous) and str(node.name).lower() in _ALLOWED_ANONYMOUS:
            continue
        elif isinstance(node, exp.Func) and not isinstance(node, _ALLOWED):
            raise _Refused(f"function {_function_name(node, text)}() is not allowed at position {at}"
                           f" (allowed: {_ALLOWED_NAMES})")
        elif isinstance(node, exp.Literal) and node.is_string and _rendered_by_sqlglot(node):
            if not _INTERVAL_TEXT.match(str(node.this)):
                raise _Refused(f"interval {str(node.this)!r} at position {at}: only numbers and units, e.g. '1 day'")
        elif isinstance(node, exp.DataType):
            _check_type(node, at)
        elif not isinstance(node, _ALLOWED):
            raise _Refused(f"{_describe(node)} is not allowed at position {at}")


def _check_column(node: exp.Column, at: int, columns: Mapping[str, str]) -> None:
    if node.table or node.args.get("db") or node.args.get("catalog"):
        raise _Refused(f"qualified name {node.sql(dialect=_DIALECT)!r} at position {at}: use the bare column name")
    if isinstance(node.this, exp.Star):
        raise _Refused(f"'*' is not allowed at position {at}")
    name = _column_name(node)
    if name not in columns:
        close = [c for c in columns if c.lower() == name.lower()]
        close = close or difflib.get_close_matches(name, list(columns), n=1, cutoff=0.6)
        if not close:
            close = [c for c in columns if c.startswith(name) or name.startswith(c)][:1]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise _Refused(f"unknown column {name!r} at position {at}{hint}")


def _column_name(node: exp.Column) -> str:
    """The column PostgreSQL would resolve: unquoted names fold to lower case (ASCII only, as it does)."""
    ident = node.this
    if isinstance(ident, exp.Identifier) and ident.quoted:
        return str(ident.this)
    return str(ident.this if isinstance(ident, exp.Identifier) else node.name).translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _check_type(node: exp.DataType, at: int) -> None:
    rendered = node.sql(dialect=_DIALECT)
    if not _TYPE_NAME.match(rendered):
        raise _Refused(f"type {rendered!r} at position {at} is not a plain type name")


def _function_name(node: exp.Func, text: str) -> str:
    """The name as the user wrote it (`now`, not sqlglot's CURRENT_TIMESTAMP)."""
    start, end = node.meta.get("start"), node.meta.get("end")
    if isinstance(start, int) and isinstance(end, int):
        return text[start:end + 1].lower()
    return str(node.name).lower() if isinstance(node, exp.Anonymous) else node.sql_name().lower()


def _describe(node: exp.Expression) -> str:
    if isinstance(node, (exp.ByteString, exp.HexString, exp.BitString, exp.National, exp.UnicodeString)):
        return "this kind of string (use a plain 'string')"
    if isinstance(node, exp.Alias):
        return f"two expressions side by side ({node.sql(dialect=_DIALECT)!r})"
    if isinstance(node, exp.Star):
        return "'*'"
    return f"{node.key.upper()} syntax"


def _position(node: exp.Expression, tokens: list[Token]) -> int:
    """1-based offset of a node in the text: its own token, else its leftmost descendant's."""
    if isinstance(node, exp.Subquery) or isinstance(node, exp.Query):
        starts = [t.start for t in tokens if t.token_type in _STATEMENT_TOKENS]
        if starts:
            return min(starts) + 1
    if isinstance(node, (exp.Placeholder, exp.Parameter)):
        starts = [t.start for t in tokens if t.token_type in (*_PARAMETER_TOKENS, TokenType.MOD)]
        if starts:
            return min(starts) + 1
    offsets = [n.meta["start"] for n in node.walk() if isinstance(n.meta.get("start"), int)]
    return min(offsets) + 1 if offsets else 1


def _is_condition(node: exp.Expression, columns: Mapping[str, str]) -> bool:
    """Whether the node is boolean-valued; operands of AND/OR/NOT must be conditions too."""
    if isinstance(node, exp.Paren):
        return _is_condition(node.this, columns)
    if isinstance(node, _CONNECTIVES):
        operands = [node.this] if isinstance(node, exp.Not) else [node.args["this"], node.args["expression"]]
        return all(_is_condition(o, columns) for o in operands)
    if isinstance(node, _PREDICATES):
        return True
    if isinstance(node, exp.Column):
        return columns.get(_column_name(node), "").strip().lower() in ("boolean", "bool")
    if isinstance(node, exp.Cast):
        return node.to.is_type(exp.DataType.Type.BOOLEAN)
    if isinstance(node, exp.Case):
        results = [i.args.get("true") for i in node.args.get("ifs") or []] + [node.args.get("default")]
        present = [r for r in results if r is not None and not isinstance(r, exp.Null)]
        return bool(present) and all(_is_condition(r, columns) for r in present)
    if isinstance(node, (exp.Coalesce, exp.Nullif)):
        return _is_condition(node.this, columns)
    return False


def _render(tree: exp.Expression) -> sql.Composable:
    """sqlglot renders the shape; columns and strings come back as psycopg objects via unique markers."""
    nonce = secrets.token_hex(6)
    marker = re.compile(rf"pgstagemark{nonce}n(\d+)x")
    parts: list[sql.Composable] = []

    def no_modulo(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Mod):  # `%` would be a placeholder to psycopg
            return exp.Anonymous(this="mod", expressions=[node.left.copy(), node.right.copy()])
        return node

    def mark(part: sql.Composable) -> exp.Expression:
        parts.append(part)
        return exp.column(f"pgstagemark{nonce}n{len(parts) - 1}x")

    def swap(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Column):
            return mark(sql.Identifier(_column_name(node)))
        if isinstance(node, exp.Literal) and node.is_string and not _rendered_by_sqlglot(node):
            return mark(_string(str(node.this)))
        return node

    # Two passes: transform() does not revisit the children of a node it replaced.
    swapped = tree.copy().transform(no_modulo).transform(swap)
    leftover = [n for n in swapped.walk() if isinstance(n, exp.Column) and not marker.fullmatch(n.name)]
    rendered = swapped.sql(dialect=_DIALECT)
    pieces = marker.split(rendered)
    if leftover or len(pieces) != 2 * len(parts) + 1:  # pragma: no cover - a guard, not a code path
        raise AssertionError(f"a check did not render every column through sql.Identifier: {rendered!r}")
    composed: list[sql.Composable] = []
    for i, piece in enumerate(pieces):
        if i % 2:
            composed.append(parts[int(piece)])
        elif piece:
            if "%" in piece:  # pragma: no cover - every source of '%' is rewritten above
                raise AssertionError(f"a rendered check contains '%': {rendered!r}")
            composed.append(sql.SQL(piece))
    return sql.Composed(composed)


def _rendered_by_sqlglot(node: exp.Literal) -> bool:
    """Strings sqlglot quotes itself as part of a larger token: a typmod, an interval's text."""
    return isinstance(node.parent, (exp.DataTypeParam, exp.Interval))


def _string(value: str) -> sql.Composable:
    """A string literal; one with `%` is spelled as U&'...' escapes so no `%` appears in the statement."""
    if "%" not in value:
        return sql.Literal(value)
    escaped = "".join(c if c.isascii() and c.isalnum() or c == " " else
                      (f"\\{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\+{ord(c):06X}") for c in value)
    return sql.SQL("U&'{}'".replace("{}", escaped))
