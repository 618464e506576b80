"""Secondary indexes around a load: found under any name, never rebuilt from SQL pgstage did not write.

The target here is TARGET below: a mixed-case schema, a table name with a
space and double quotes, and an index name with a space, through every path that looks the
target up by name: the auto index strategy, dry run, rejects, a killed run resumed, repair.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import psycopg
import pytest

import pgstage
from pgstage.errors import UntrustedIndexDefinition
from pgstage.indexes import plain_definition, secondary_indexes
from pgstage.rejects import list_rejects
from pgstage.repair import repair
from pgstage.spec import parse_spec
from tests.conftest import Loader

TARGET = '"Sales"."Order ""Lines"""'
SPEC = """
[pipeline]
name = "lines"
target = 'Sales.Order "Lines"'
key = ["id"]

[source]
path = "lines*.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
note = {{ from = "note", type = "text", required = true }}

[load]
index_strategy = "{strategy}"
batch_rows = {batch_rows}
max_reject_ratio = 0.5
"""


def csv_of(rows: list[tuple[int, str]]) -> str:
    return "id,note\n" + "".join(f"{i},{note}\n" for i, note in rows)


def index_oids(sql) -> dict[str, int]:
    return {name: oid for name, oid in sql(
        "SELECT c.relname, c.oid::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        f" WHERE i.indrelid = '{TARGET}'::regclass")}


def table(sql) -> dict[int, str]:
    return dict(sql(f"SELECT id, note FROM {TARGET}"))


def child_run(loader: Loader, fault: str) -> int:
    env = {**os.environ, "PGSTAGE_FAULT": fault}
    return subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(loader.root / "spec.toml"),
                           "--db", loader.db_url], env=env, capture_output=True, text=True, timeout=300).returncode


def test_auto_keeps_the_indexes_of_a_large_mixed_case_target_for_a_small_load(loader: Loader, sql) -> None:
    """20,000 rows in the target, 50,000 coming: below the 4x of `auto`, so the indexes stay (same oids)."""
    loader.spec(SPEC.format(strategy="auto", batch_rows=100_000))
    loader.write("lines1.csv", csv_of([(1, "a"), (2, "b"), (3, "c")]))
    loader.run()
    sql(f"INSERT INTO {TARGET} (id, note) SELECT g, 'seed' FROM generate_series(4, 20000) g")
    sql(f'CREATE INDEX "Lines by note" ON {TARGET} (note)')
    sql(f"ANALYZE {TARGET}")
    before = index_oids(sql)
    assert set(before) == {"Lines by note", 'Order "Lines"_pkey'}
    loader.write("lines2.csv", csv_of([(i, f"n{i}") for i in range(10_001, 60_001)]))
    report = loader.run()
    assert report.counts.as_dict() == {"read": 50_000, "rejected": 0, "valid": 50_000, "duplicate": 0,
                                       "inserted": 40_000, "updated": 10_000, "unchanged": 0, "stale": 0, "deleted": 0}
    assert index_oids(sql) == before            # neither dropped nor rebuilt
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    expected = {1: "a", 2: "b", 3: "c", **{i: "seed" for i in range(4, 10_001)},
                **{i: f"n{i}" for i in range(10_001, 60_001)}}
    assert table(sql) == expected


def test_a_mixed_case_target_through_dry_run_rejects_resume_and_repair(loader: Loader, sql) -> None:
    loader.spec(SPEC.format(strategy="rebuild", batch_rows=2))
    loader.write("lines1.csv", csv_of([(1, "a"), (2, "b")]))
    loader.run()
    sql(f'CREATE INDEX "Lines by note" ON {TARGET} (note)')

    # Dry run: a forecast, nothing written, the index untouched.
    loader.write("lines2.csv", csv_of([(2, "B"), (3, "c"), (4, ""), (5, "e"), (6, "f")]))
    before = index_oids(sql)
    dry = loader.run(dry_run=True)
    assert (dry.counts.inserted, dry.counts.updated, dry.counts.rejected) == (3, 1, 1)
    assert table(sql) == {1: "a", 2: "b"} and index_oids(sql) == before

    # Killed right after its second batch committed: the rerun resumes the same run.
    assert child_run(loader, "merge.after:2") == -9
    killed = sql("SELECT run_id FROM pgstage.runs WHERE status = 'running'")
    assert len(killed) == 1
    report = loader.run()
    assert report.run_id == killed[0][0]
    assert sql("SELECT attempts, status FROM pgstage.runs WHERE run_id = %s", (report.run_id,)) == [(2, "succeeded")]
    assert report.counts.as_dict() == {"read": 5, "rejected": 1, "valid": 4, "duplicate": 0, "inserted": 3,
                                       "updated": 1, "unchanged": 0, "stale": 0, "deleted": 0}
    assert table(sql) == {1: "a", 2: "B", 3: "c", 5: "e", 6: "f"}
    assert set(index_oids(sql)) == {"Lines by note", 'Order "Lines"_pkey'}

    # Rejects: record 3 of lines2.csv, its note required.
    rows = list_rejects(killed[0][0], db=loader.db_url)
    assert [(r.file, r.record, [x.name for x in r.reasons]) for r in rows] == [
        (str(loader.root / "lines2.csv"), 3, ["note.required"])]

    # Killed inside the index rebuild: the index is missing until repair puts it back.
    loader.write("lines3.csv", csv_of([(7, "g")]))
    assert child_run(loader, "index.rebuild") == -9
    assert "Lines by note" in {name for (name,) in sql("SELECT index_name FROM pgstage.index_rebuilds")}
    fixed = repair(loader.root / "spec.toml", db=loader.db_url)
    assert fixed.target == 'Sales.Order "Lines"' and fixed.rebuilt_indexes == ("Lines by note",)
    assert set(index_oids(sql)) == {"Lines by note", 'Order "Lines"_pkey'}
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]


@pytest.mark.parametrize("definition", [
    'CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (lower(note))',          # an expression
    'CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note) WHERE (id > 0)',  # a predicate
    'CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note); DROP TABLE x',
    'CREATE INDEX "Lines by note" ON "Sales".other USING btree (note)',                               # another table
    'CREATE INDEX other ON "Sales"."Order ""Lines""" USING btree (note)',                             # another index
    'CREATE TABLE "Sales".pwned ()',
])
def test_a_tampered_definition_is_refused_and_not_run(loader: Loader, sql, definition: str) -> None:
    loader.spec(SPEC.format(strategy="keep", batch_rows=100))
    loader.write("lines1.csv", csv_of([(1, "a")]))
    first = loader.run()
    sql("INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id) VALUES (%s, %s, %s, %s)",
        ('Sales.Order "Lines"', "Lines by note", definition, first.run_id))
    loader.write("lines2.csv", csv_of([(2, "b")]))
    with pytest.raises(UntrustedIndexDefinition) as caught:
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert "pgstage did not write, so it was not run" in caught.value.message
    assert caught.value.hint is not None and "DELETE FROM pgstage.index_rebuilds" in caught.value.hint
    with pytest.raises(UntrustedIndexDefinition):
        repair(loader.root / "spec.toml", db=loader.db_url)
    # Nothing ran, nothing was loaded.
    assert set(index_oids(sql)) == {'Order "Lines"_pkey'}
    assert sql("SELECT to_regclass('\"Sales\".pwned')") == [(None,)]
    assert table(sql) == {1: "a"}


def test_the_cli_reports_a_tampered_definition_without_a_traceback(loader: Loader, sql) -> None:
    loader.spec(SPEC.format(strategy="keep", batch_rows=100))
    loader.write("lines1.csv", csv_of([(1, "a")]))
    first = loader.run()
    sql("INSERT INTO pgstage.index_rebuilds (target, index_name, definition, run_id) VALUES (%s, %s, %s, %s)",
        ('Sales.Order "Lines"', "evil", 'CREATE INDEX evil ON "Sales"."Order ""Lines""" USING btree (lower(note))',
         first.run_id))
    result = subprocess.run([sys.executable, "-m", "pgstage.cli", "repair", str(loader.root / "spec.toml"),
                             "--db", loader.db_url], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "index 'evil'" in result.stderr and "so it was not run" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("definition, plain", [
    ('CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note)', True),
    ('CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note DESC NULLS LAST, id)', True),
    ('CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note COLLATE "C" text_pattern_ops)', True),
    ('CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note) INCLUDE (id)', True),
    ('CREATE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree ((note || \'x\'))', False),
    ('CREATE UNIQUE INDEX "Lines by note" ON "Sales"."Order ""Lines""" USING btree (note)', False),
    ('CREATE INDEX "Lines by note" ON sales."Order ""Lines""" USING btree (note)', False),
])
def test_plain_definition(definition: str, plain: bool) -> None:
    assert plain_definition(definition, "Lines by note", ("Sales", 'Order "Lines"')) is plain


def test_the_list_of_indexes_holds_while_another_session_drops_and_creates_one(loader: Loader, sql) -> None:
    """pg_get_indexdef of an index dropped between the catalog scan and its lookup failed the listing
    ("cache lookup failed", about one call in ten under this churn before the table was locked)."""
    sql('CREATE SCHEMA "Sales"')
    sql(f"CREATE TABLE {TARGET} (id bigint PRIMARY KEY, note text, other text)")
    sql(f'CREATE INDEX "Lines by other" ON {TARGET} (other)')
    spec = parse_spec(SPEC.format(strategy="rebuild", batch_rows=10))
    stop = threading.Event()
    churned = []

    def churn() -> None:
        with psycopg.connect(loader.db_url, autocommit=True) as other:
            while not stop.is_set():
                other.execute(f'CREATE INDEX IF NOT EXISTS "Lines by note" ON {TARGET} (note)')
                other.execute('DROP INDEX IF EXISTS "Sales"."Lines by note"')
                churned.append(1)

    worker = threading.Thread(target=churn)
    worker.start()
    seen = set()
    try:
        with psycopg.connect(loader.db_url, autocommit=True) as conn:
            for _ in range(2000):
                listed = dict(secondary_indexes(conn, spec))
                assert listed["Lines by other"] == f'CREATE INDEX "Lines by other" ON "Sales".{TARGET.split(".")[1]} USING btree (other)'
                seen.add(tuple(sorted(listed)))
    finally:
        stop.set()
        worker.join()
    assert len(churned) > 50   # the other session really dropped and created meanwhile
    assert seen <= {("Lines by other",), ("Lines by note", "Lines by other")}
