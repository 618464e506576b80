"""`pgstage reprocess`: rows re-derived from their kept raw records, counted, exactly once under kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from pgstage.errors import SpecError
from pgstage.reprocess import reprocess
from tests.conftest import Loader, assert_identity

ROWS = 30_000
STATUSES = [" Paid", "refunded", "PAID ", "pending", "chargeback", "weird"]
EMAILS = ["A@X.com", " b@y.com ", "c@z.org"]
SPEC = """
[pipeline]
name = "pay"
target = "r.payments"
key = ["id"]

[source]
path = "payments.csv"

[columns]
id = {{ from = "id", type = "bigint" }}
status = {{ from = "status", type = "text", normalize = ["trim", "lower"], map = {{ {map} }} }}
email = {{ from = "email", type = "text"{email} }}
amount = {{ from = "amount", type = "money_cents", min = 0 }}

[load]
{raw}
"""
V1 = SPEC.format(map='paid = "confirmed"', email="", raw='raw_column = "_raw"')
V2 = SPEC.format(map='paid = "confirmed", chargeback = "disputed"', email=', normalize = ["trim", "lower"]',
                 raw='raw_column = "_raw"')


def status_v1(i: int) -> str:
    text = STATUSES[i % 6].strip().lower()
    return {"paid": "confirmed"}.get(text, text)


def status_v2(i: int) -> str:
    text = STATUSES[i % 6].strip().lower()
    return {"paid": "confirmed", "chargeback": "disputed"}.get(text, text)


def email_v1(i: int) -> str:
    return EMAILS[i % 3]


def email_v2(i: int) -> str:
    return EMAILS[i % 3].strip().lower()


@pytest.fixture
def loaded(loader: Loader, sql) -> Loader:
    loader.spec(V1)
    loader.write("payments.csv", "id,status,email,amount\n" + "".join(
        f'{i},{STATUSES[i % 6]},"{EMAILS[i % 3]}",{i % 90}.50\n' for i in range(ROWS)))
    first = loader.run()
    assert first.counts.inserted == ROWS
    assert sql("SELECT count(*) FROM r.payments WHERE email = ' b@y.com '") == [(ROWS // 3,)]
    loader.spec(V2)
    return loader


def table(sql) -> list[tuple[int, str, str, int]]:
    return sql("SELECT id, status, email, amount FROM r.payments ORDER BY id")


def test_a_changed_map_and_normalize_update_exactly_the_affected_rows(loaded: Loader, sql) -> None:
    changed = [i for i in range(ROWS) if (status_v1(i), email_v1(i)) != (status_v2(i), email_v2(i))]
    report = reprocess(loaded.root / "spec.toml", db=loaded.db_url, batch_rows=7_000)
    assert_identity(report)
    assert (report.partition, report.status) == ("reprocess", "succeeded")
    assert report.counts.as_dict() == {"read": ROWS, "rejected": 0, "valid": ROWS, "duplicate": 0, "inserted": 0,
                                       "updated": len(changed), "unchanged": ROWS - len(changed), "stale": 0,
                                       "deleted": 0}
    assert table(sql) == [(i, status_v2(i), email_v2(i), (i % 90) * 100 + 50) for i in range(ROWS)]
    assert sql("SELECT count(*) FROM r.payments WHERE _run_id = %s", (report.run_id,)) == [(len(changed),)]
    assert sql("SELECT status, counts->>'updated' FROM pgstage.runs WHERE run_id = %s", (report.run_id,)) == [
        ("succeeded", str(len(changed)))]
    shown = subprocess.run([sys.executable, "-m", "pgstage.cli", "show", str(report.run_id), "--db", loaded.db_url,
                            "--json"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["files"] == [{"path": "reprocess:r.payments", "status": "loaded", "ignored_fields": [],
                                  "rows": report.counts.as_dict()}]
    batches = document["batches"]                             # pages in order, records numbered on
    assert len(batches) > 1 and batches[0]["byte_start"] == 0 and batches[0]["record_start"] == 1
    assert all(a["byte_end"] == b["byte_start"] and a["record_end"] + 1 == b["record_start"]
               for a, b in zip(batches, batches[1:]))
    assert sum(b["counts"]["read"] for b in batches) == ROWS
    again = reprocess(loaded.root / "spec.toml", db=loaded.db_url)
    assert (again.counts.read, again.counts.updated, again.counts.unchanged) == (ROWS, 0, ROWS)


def test_rejects_under_the_new_rules_are_recorded_and_keep_their_row(loaded: Loader, sql) -> None:
    loaded.spec(V2.replace('normalize = ["trim", "lower"], map', 'normalize = ["trim", "lower"],'
                           ' in = ["confirmed", "refunded", "pending", "disputed"], map'))
    before = table(sql)
    report = reprocess(loaded.root / "spec.toml", db=loaded.db_url, where="id < 600", batch_rows=5_000)
    assert_identity(report)
    weird = [i for i in range(600) if i % 6 == 5]
    changed = [i for i in range(600) if i % 6 != 5 and (status_v1(i), email_v1(i)) != (status_v2(i), email_v2(i))]
    assert (report.counts.read, report.counts.rejected, report.counts.updated) == (600, len(weird), len(changed))
    assert report.rejects_by_rule == {"status.in": len(weird)}
    rejected = sql("SELECT raw->>'id', reasons->0->>'rule', reasons->0->>'message' FROM pgstage.rejects"
                   " WHERE run_id = %s ORDER BY (raw->>'id')::int", (report.run_id,))
    assert rejected == [(str(i), "in", "'weird' is not one of confirmed, refunded, pending, disputed") for i in weird]
    after = {row[0]: row for row in table(sql)}
    assert [after[i] for i in weird] == [before[i] for i in weird]         # a reject keeps its row
    assert all(after[i] == before[i] for i in range(600, ROWS))            # outside --where: untouched


def test_dry_run_counts_and_writes_nothing(loaded: Loader, sql) -> None:
    before = table(sql)
    report = reprocess(loaded.root / "spec.toml", db=loaded.db_url, dry_run=True)
    assert report.dry_run and report.counts.updated == sum(
        1 for i in range(ROWS) if (status_v1(i), email_v1(i)) != (status_v2(i), email_v2(i)))
    assert table(sql) == before


def test_kill_9_mid_reprocess_then_rerun_counts_every_row_once(loaded: Loader, sql) -> None:
    env = {**os.environ, "PGSTAGE_FAULT": "reprocess.batch:2"}
    killed = subprocess.run([sys.executable, "-m", "pgstage.cli", "reprocess", str(loaded.root / "spec.toml"),
                             "--db", loaded.db_url, "--batch-rows", "5000"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [(run_id, status, batches)] = sql("SELECT r.run_id, r.status, count(b.*) FROM pgstage.runs r JOIN pgstage.batches b"
                                      " USING (run_id) WHERE r.partition = 'reprocess' GROUP BY 1, 2")
    assert (status, batches) == ("running", 2)
    done = subprocess.run([sys.executable, "-m", "pgstage.cli", "reprocess", str(loaded.root / "spec.toml"),
                           "--db", loaded.db_url, "--batch-rows", "5000", "--json"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    changed = sum(1 for i in range(ROWS) if (status_v1(i), email_v1(i)) != (status_v2(i), email_v2(i)))
    assert document["run_id"] == run_id
    assert document["rows"]["read"] == ROWS and document["rows"]["updated"] == changed
    assert document["rows"]["unchanged"] == ROWS - changed
    assert table(sql) == [(i, status_v2(i), email_v2(i), (i % 90) * 100 + 50) for i in range(ROWS)]


def test_a_spec_without_raw_records_is_refused(loader: Loader, sql) -> None:
    loader.spec(SPEC.format(map='paid = "confirmed"', email="", raw=""))
    with pytest.raises(SpecError) as caught:
        reprocess(loader.root / "spec.toml", db=loader.db_url)
    assert "keeps no raw records, so there is nothing to reprocess from" in caught.value.message
    assert caught.value.hint and 'add raw_column = "_raw" under [load]' in caught.value.hint
    cli = subprocess.run([sys.executable, "-m", "pgstage.cli", "reprocess", str(loader.root / "spec.toml"),
                          "--db", loader.db_url], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2 and "keeps no raw records" in cli.stderr and "Traceback" not in cli.stderr
    assert sql("SELECT to_regclass('pgstage.runs')") == [(None,)]   # nothing written, not even the ledger


def test_a_bad_where_is_refused_before_anything_runs(loaded: Loader, sql) -> None:
    with pytest.raises(SpecError, match=r"--where: ';' at position 7"):
        reprocess(loaded.root / "spec.toml", db=loaded.db_url, where="id < 1; drop table r.payments")
    assert sql("SELECT count(*) FROM pgstage.runs WHERE partition = 'reprocess'") == [(0,)]
