"""A killed client's server session must not keep the pipeline locked (or its rows) for long.

After kill -9 of `pgstage run`, its backends would go on with their current statements.
Here a statement is made long on purpose while a child `pgstage run` is killed during it;
a re-run started at once must succeed with exact counts: no exit 4 for the lock, no lock
timeout behind the orphan's rows. The slowness is switched on for the child's sessions only
(a database default that the re-run's new sessions no longer see).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psycopg
import pytest

import pgstage
from pgstage import safety
from pgstage.errors import PipelineLocked
from tests import specs
from tests.conftest import Loader

SPEC = specs.template(name="orphan", target="app.items", path="items*.csv", columns=specs.NOTES, strategy=None,
                      load='index_strategy = "rebuild"\nlock_timeout = "5s"\nmax_retries = 1')

SLOW = "pgstage_test.slow"
# Per row in a merge (a worker's session), or once for a CREATE INDEX (the run's main session,
# the one that holds the pipeline lock): either way far longer than the test waits.
SETUP = f"""
CREATE FUNCTION app.slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{SLOW}', true) = 'merge' THEN PERFORM pg_sleep(1); END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER slow BEFORE INSERT OR UPDATE ON app.items FOR EACH ROW EXECUTE FUNCTION app.slow_row();
CREATE FUNCTION app.slow_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('{SLOW}', true) = 'index' AND tg_tag = 'CREATE INDEX' THEN PERFORM pg_sleep(300); END IF;
END $$;
CREATE EVENT TRIGGER slow_ddl ON ddl_command_end EXECUTE FUNCTION app.slow_ddl();
CREATE INDEX items_note ON app.items (note);
"""


def wait_for_sleeper(db_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event = 'PgSleep'").fetchone() != (0,):
                return
            time.sleep(0.1)
    raise AssertionError("the child never reached the slow statement")


@pytest.mark.parametrize("where", ["merge", "index"])
def test_a_rerun_right_after_kill_9_succeeds(loader: Loader, sql, db_url: str, where: str) -> None:
    loader.spec(SPEC.format())
    loader.write("items1.csv", "id,note\n1,a\n2,b\n")
    loader.run()
    sql(SETUP)
    loader.write("items2.csv", "id,note\n" + "".join(f"{i},n{i}\n" for i in range(2, 202)))
    dbname = sql("SELECT current_database()")[0][0]
    sql(f'ALTER DATABASE "{dbname}" SET {SLOW} = %s'.replace("%s", f"'{where}'"))
    child = subprocess.Popen([sys.executable, "-m", "pgstage.cli", "run", str(loader.root / "spec.toml"),
                              "--db", loader.db_url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_sleeper(db_url)
    finally:
        child.kill()
        child.wait(timeout=60)
        sql(f'ALTER DATABASE "{dbname}" RESET {SLOW}')
    assert child.returncode == -9
    killed = sql("SELECT run_id FROM pgstage.runs WHERE status = 'running'")
    assert len(killed) == 1

    report = loader.run()   # at once: no exit 4, no lock timeout behind the orphaned session

    assert report.status == "succeeded" and report.run_id == killed[0][0]
    assert report.counts.as_dict() == {"read": 200, "rejected": 0, "valid": 200, "duplicate": 0, "inserted": 199,
                                       "updated": 1, "unchanged": 0, "stale": 0, "deleted": 0}
    assert sql("SELECT id, note FROM app.items ORDER BY id") == [(1, "a"), *((i, f"n{i}") for i in range(2, 202))]
    assert sql("SELECT indexname FROM pg_indexes WHERE schemaname = 'app' ORDER BY 1") == [
        ("items_note",), ("items_pkey",)]
    assert sql("SELECT count(*) FROM pgstage.index_rebuilds") == [(0,)]
    assert sql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'") == [(0,)]
    assert os.environ.get("PGSTAGE_FAULT") is None


@pytest.mark.parametrize("holder_alive", [False, True])
def test_a_lock_still_held_after_the_wait_exits_4_saying_why(loader: Loader, sql, db_url: str,
                                                              monkeypatch: pytest.MonkeyPatch, holder_alive: bool) -> None:
    """The ledger's holder is a dead process of this host (or a live one): its session keeps the lock."""
    loader.spec(SPEC.format())
    loader.write("items1.csv", "id,note\n1,a\n")
    loader.run()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = os.getppid() if holder_alive else int(dead.stdout)
    sql("INSERT INTO pgstage.runs (pipeline, partition, target, status, host, pid) VALUES"
        " ('orphan', NULL, 'app.items', 'running', %s, %s)", (socket.gethostname(), pid))
    monkeypatch.setattr(safety, "ORPHAN_WAIT_S", 1.0)
    loader.write("items2.csv", "id,note\n2,b\n")
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (safety.lock_key("orphan", None),))
        with pytest.raises(PipelineLocked) as caught:
            pgstage.run(loader.root / "spec.toml", db=db_url)
    gone = f"its process {pid} on {socket.gethostname()} is gone but its database session did not end within 1 s"
    assert (gone in caught.value.message) is not holder_alive
    assert caught.value.hint is not None and ("pg_terminate_backend" in caught.value.hint) is not holder_alive
    assert caught.value.exit_code == 4
    assert sql("SELECT id, note FROM app.items ORDER BY id") == [(1, "a")]
