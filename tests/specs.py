"""Spec templates the test modules share: the same few tables, declared once.

`template()` returns TOML with `str.format` placeholders left where the caller put them
(`name = "p{n}"`, `load = "workers = {workers}"`), the column blocks' own braces escaped.
"""

from __future__ import annotations

# id, a version, cents that must be there and not negative, a free note: the crash, worker
# and property suites' table, with an independent Python oracle in test_property.
ITEMS = """
id = { from = "id", type = "bigint" }
v = { from = "version", type = "integer" }
amount = { from = "amount", type = "money_cents", required = true, min = 0 }
note = { from = "note", type = "text" }
"""

# The messy-input suites' table: a required integer key, a name, an amount.
MESSY = """
id     = { from = "id", type = "integer", required = true }
name   = { from = "name", type = "text" }
amount = { from = "amount", type = "numeric(10,2)" }
"""

# A key and a note: the smallest table, for tests about sessions and faults rather than data.
NOTES = """
id = { from = "id", type = "bigint" }
note = { from = "note", type = "text" }
"""


def template(*, name: str, target: str, path: str, columns: str, strategy: str | None = "upsert",
             pipeline: str = "", kind: str | None = None, source: str = "", load: str = "",
             column_placeholders: bool = False) -> str:
    """A pipeline spec keyed on `id`; `pipeline`, `source` and `load` are extra lines of their sections.

    `column_placeholders`: `columns` is itself a format template (its braces already doubled).
    """
    lines = ["", "[pipeline]", f'name = "{name}"', f"target = '{target}'", 'key = ["id"]',
             *([f'strategy = "{strategy}"'] if strategy else []), *([pipeline] if pipeline else []),
             "", "[source]", *([f'kind = "{kind}"'] if kind else []), f'path = "{path}"', *([source] if source else []),
             "", "[columns]", columns.strip() if column_placeholders else columns.strip().replace("{", "{{").replace("}", "}}"),
             "", "[load]", *([load] if load else []), ""]
    return "\n".join(lines)
