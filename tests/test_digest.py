"""A file's SHA-256 computed in a thread while the run stages it (pipeline/extract/digest.py).

The digest must still be exactly hashlib's, in every batch and file row; a file loaded before is
still skipped, a changed one loaded again, a killed run resumed; a file whose path the ledger
holds is hashed before it is staged; and a file that changes under the run fails it before
anything is merged.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

import pgstage
from pgstage.errors import SourceError
from pgstage.ops import logs
from pgstage.pipeline import stage
from pgstage.pipeline.extract import digest as digests
from pgstage.pipeline.extract.digest import Ahead, Digest
from pgstage.pipeline.extract.files import SourceFile, fingerprint
from tests import specs
from tests.conftest import Loader

SPEC = specs.template(name="digest", target="app.notes", path="in.csv", columns=specs.NOTES,
                      load="batch_rows = 10\nmax_reject_ratio = 0.5").format()


def csv_of(rows: list[tuple[str, str]]) -> str:
    return "id,note\n" + "".join(f"{i},{n}\n" for i, n in rows)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def no_hash_thread() -> bool:
    return not any(t.name == digests.THREAD_NAME for t in threading.enumerate())


# --- the Digest itself (no database) ---------------------------------------------------------

@given(st.binary(max_size=3000), st.integers(min_value=1, max_value=64))
@settings(max_examples=60, deadline=None)
def test_the_digest_is_hashlibs_whatever_the_chunk_size(data: bytes, chunk: int) -> None:
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(digests, "CHUNK", chunk)
        path = Path(folder) / "f.bin"
        path.write_bytes(data)
        assert fingerprint(path).sha256 == hashlib.sha256(data).hexdigest()
        with Ahead([d := Digest.of(path)]):
            assert d.value() == hashlib.sha256(data).hexdigest()


def test_many_readers_hash_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(os.urandom(3 << 20))
    calls: list[int] = []
    real = Digest._hash

    def counted(self: Digest, stop: threading.Event | None) -> str | None:
        calls.append(1)
        time.sleep(0.05)   # long enough for every reader to arrive while it runs
        return real(self, stop)

    monkeypatch.setattr(Digest, "_hash", counted)
    digest = Digest.of(path)
    seen: list[str] = []
    readers = [threading.Thread(target=lambda: seen.append(digest.value())) for _ in range(8)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert seen == [sha(path)] * 8 and calls == [1]
    assert "Digest(" in repr(SourceFile(path, 1, Digest.of(path)))   # a repr never hashes
    assert len(calls) == 1


def test_the_thread_ends_with_its_block_and_hands_back_what_it_did_not_finish(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digests, "CHUNK", 64)   # ~16,000 reads: the block ends while the thread hashes
    path = tmp_path / "f.csv"
    path.write_bytes(os.urandom(1 << 20))
    first, second = Digest.of(path), Digest.of(path)
    with Ahead([first, second]):
        pass
    assert no_hash_thread()
    assert not second.ready
    assert first.value() == second.value() == sha(path)   # computed by the caller, whatever the thread left


def test_an_unreadable_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "gone.csv"
    path.write_text("id\n1\n")
    digest = Digest.of(path)
    path.unlink()
    with pytest.raises(SourceError) as raised:
        digest.value()
    assert str(raised.value) == f"{path}: cannot read it: No such file or directory"
    with pytest.raises(SourceError):   # every reader sees it, the file is not read again
        digest.value()


def test_a_file_changed_after_the_run_noted_it_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_text("id\n1\n")
    digest = Digest.of(path)
    path.write_text("id\n1\n2\n")
    with pytest.raises(SourceError) as raised:
        digest.value()
    assert raised.value.location.file == str(path)
    assert "the file changed while the run read it" in raised.value.message
    assert raised.value.exit_code == 1


# --- runs against a real server --------------------------------------------------------------

@pytest.fixture
def order(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the run did first, hashing or staging: the thread is off, so each digest is computed
    exactly where the run first asks for it ("hash"), and every COPY into staging says "copy"."""
    events: list[str] = []
    monkeypatch.setattr(Ahead, "__enter__", lambda self: self)
    real_hash, real_copy = Digest._hash, stage.db_copy

    def hashing(self: Digest, stop: threading.Event | None) -> str | None:
        events.append("hash")
        return real_hash(self, stop)

    def copying(cursor: Any, statement: Any, *, label: str) -> Any:
        events.append("copy")
        return real_copy(cursor, statement, label=label)

    monkeypatch.setattr(Digest, "_hash", hashing)
    monkeypatch.setattr(stage, "db_copy", copying)
    return events


def ledger_digests(sql: Any, run_id: int | None) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    batches = sql("SELECT DISTINCT file, sha256 FROM pgstage.batches WHERE run_id = %s", (run_id,))
    files = sql("SELECT path, sha256, size FROM pgstage.files WHERE run_id = %s", (run_id,))
    return batches, files


def test_first_load_stores_hashlibs_digest_in_every_batch_and_file_row(loader: Loader, sql: Any) -> None:
    rows = [(str(i), f"n{i}") for i in range(1, 46)] + [("x", "bad id"), ("47", "last")]
    path = loader.write("in.csv", csv_of(rows))
    loader.spec(SPEC)
    report = loader.run()
    assert no_hash_thread()
    assert report.status == "succeeded"
    assert (report.counts.read, report.counts.rejected, report.counts.inserted) == (47, 1, 46)
    assert sql("SELECT count(*) FROM pgstage.batches WHERE run_id = %s", (report.run_id,)) == [(5,)]
    assert ledger_digests(sql, report.run_id) == ([(str(path), sha(path))], [(str(path), sha(path), path.stat().st_size)])
    assert sql("SELECT record, reasons->0->>'rule' FROM pgstage.rejects") == [(46, "type")]
    expected = {int(i): n for i, n in rows if i.isdigit()}
    assert dict(sql("SELECT id, note FROM app.notes")) == expected


def test_the_same_bytes_are_skipped_and_changed_bytes_loaded_again(loader: Loader, sql: Any,
                                                                   order: list[str]) -> None:
    path = loader.write("in.csv", csv_of([(str(i), f"n{i}") for i in range(1, 26)]))
    loader.spec(SPEC)
    first = loader.run()
    assert order[0] == "copy" and order.count("hash") == 1   # a path the ledger never saw: staged before hashed
    order.clear()
    again = loader.run()
    assert (again.status, [f.status for f in again.files]) == ("skipped", ["skipped"])
    assert order == ["hash"]   # the skip needs the digest, and nothing is staged
    assert sql("SELECT count(*) FROM pgstage.files") == [(1,)]

    old = sha(path)
    order.clear()
    loader.write("in.csv", csv_of([(str(i), f"changed{i}") for i in range(1, 31)]))
    changed = loader.run()
    assert order[0] == "hash" and "copy" in order   # the ledger holds the path: hashed before anything is staged
    assert changed.status == "succeeded" and changed.run_id != first.run_id
    assert (changed.counts.read, changed.counts.updated, changed.counts.inserted) == (30, 25, 5)
    assert dict(sql("SELECT id, note FROM app.notes")) == {i: f"changed{i}" for i in range(1, 31)}
    assert sorted(sql("SELECT sha256, run_id FROM pgstage.files")) == sorted(
        [(old, first.run_id), (sha(path), changed.run_id)])
    assert ledger_digests(sql, changed.run_id)[0] == [(str(path), sha(path))]


def test_a_run_killed_at_a_checkpoint_resumes_with_the_digest_first(loader: Loader, sql: Any,
                                                                    order: list[str]) -> None:
    rows = [(str(i), f"n{i}") for i in range(1, 51)]
    path = loader.write("in.csv", csv_of(rows))
    spec = loader.spec(SPEC)
    child = subprocess.run([sys.executable, "-m", "pgstage.cli", "run", str(spec), "--db", loader.db_url],
                           env={**os.environ, "PGSTAGE_FAULT": "merge.after:2"}, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr
    [(killed, merged)] = sql("SELECT r.run_id, count(*) FILTER (WHERE b.status = 'merged') FROM pgstage.runs r"
                             " JOIN pgstage.batches b USING (run_id) GROUP BY 1")
    assert merged == 2 and ledger_digests(sql, killed) == ([(str(path), sha(path))], [])

    report = loader.run()
    assert order[0] == "hash" and "copy" in order   # the resume point needs the digest before staging
    assert (report.run_id, report.status) == (killed, "succeeded")
    assert (report.counts.read, report.counts.inserted) == (50, 50)
    assert sql("SELECT batch_no, record_start, record_end, status FROM pgstage.batches ORDER BY batch_no") == [
        (n, 10 * n + 1, 10 * n + 10, "merged") for n in range(5)]
    assert ledger_digests(sql, killed) == ([(str(path), sha(path))], [(str(path), sha(path), path.stat().st_size)])
    assert dict(sql("SELECT id, note FROM app.notes")) == {int(i): n for i, n in rows}


def test_a_file_that_changes_while_it_is_staged_fails_the_run_and_merges_nothing(
        loader: Loader, sql: Any, order: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = loader.write("in.csv", csv_of([(str(i), f"n{i}") for i in range(1, 26)]))
    loader.spec(SPEC)
    real_emit = logs.emit

    def grow_when_staging_starts(event: str, **fields: Any) -> None:
        if event == "file started":   # the writer appends while the run stages (its digest still to come)
            with path.open("a") as handle:
                handle.write("26,late\n")
        real_emit(event, **fields)

    monkeypatch.setattr(logs, "emit", grow_when_staging_starts)
    with pytest.raises(SourceError) as raised:
        pgstage.run(loader.root / "spec.toml", db=loader.db_url)
    assert raised.value.location.file == str(path)
    assert raised.value.message.startswith("the file changed while the run read it")
    assert sql("SELECT to_regclass('app.notes')") == [(None,)]   # the target is created only to merge
    assert sql("SELECT status FROM pgstage.runs") == [("failed",)]
    assert sql("SELECT count(*) FROM pgstage.files") == [(0,)]
    assert sql("SELECT count(*) FROM pgstage.batches WHERE status = 'merged'") == [(0,)]

    monkeypatch.setattr(logs, "emit", real_emit)
    report = loader.run()   # the file is complete now: the resumed run loads all of it
    assert (report.status, report.counts.read, report.counts.inserted) == ("succeeded", 26, 26)
    assert ledger_digests(sql, report.run_id)[1] == [(str(path), sha(path), path.stat().st_size)]
