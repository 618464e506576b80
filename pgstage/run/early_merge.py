"""A run's first batches merged while its last one validates, and committed only once the run goes ahead.

Nothing is merged until every batch is validated, because the reject threshold, the volume check
and the keys repeated across batches are judged over the whole run. On a first load of two
million-record batches that left the merge phase at the end of the run by itself: two INSERTs
that contend for the WAL and run no faster side by side than one after the other, while the
validation before them had kept both cores busy. Here the batches validate one at a time (each
still a parallel query) and, as each but the last is validated, a session of its own merges it
with its checkpoint, inside one open transaction, while the next one validates. When the run
goes ahead (`stop`, then `commit`, called by phase 2 after the threshold, the volume verdict and
the merge plan) the pool starts merging the other batches at once, and that transaction commits
before any of them may, so a crash still leaves a prefix of the batches merged.

Whatever stops the run first rolls the transaction back (`close`): the threshold, a blocking
anomaly, a failed validation, batches that share a key (their losers are set aside by the plan,
which the early merges did not know), any error, a retry. A kill -9 drops the session and the
server rolls it back: the batches are still `validated` in the ledger and the resumed run merges
them. A failure on this session itself (a key a concurrent load wrote, a lost connection) hands
its batches back to phase 2: the early start is an optimisation, never a new way to fail.

The indexes a large load drops (pgstage/indexes.py) go before the first early merge, when every
batch is staged (`begin`), between two validations (`Turns`): a DROP INDEX would otherwise wait
for this transaction, which waits for the run, or for a validation's read of the target. A run
refused after that gets them back at once (`_attempt` rebuilds them).

Into an empty target the key's own constraint may go with them (pgstage/key_index.py says when):
then the early session locks other writers out (`SHARE ROW EXCLUSIVE`, taken as its transaction
opens, under which it checks the target is still empty), merges the last batch too, after `stop`,
and makes the key again before it commits. Its inserts skip the count of repeated keys, inside a
savepoint: should the key's index then find one, they are undone, the key is made on the empty
table and the batches merge again the usual way, each with its one row per key. Whenever the key
is not made again in that transaction (a refused run, an error, the early session lost), it is
put back before anything else is merged (`give_back_key`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgstage import faults, indexes, key_index, target
from pgstage.db import connect, execute, roll_back_and_close
from pgstage.errors import UNIQUE_VIOLATION, DatabaseError
from pgstage.pipeline import chunks, ledger, merge
from pgstage.run.state import _merged
from pgstage.safety import apply_session_settings
from pgstage.spec import Spec
from pgstage.workers import Aborted

if TYPE_CHECKING:
    from pgstage.pipeline import transform, validate

Event = Callable[..., None]


def eligible(spec: Spec, *, dry_run: bool, cdc: bool, throttled: bool, pipelined: bool, target_complete: bool) -> bool:
    """Whether a run may merge its first batches before its last one is validated.

    The keyed strategies only (append, replace_partition and scd2 write collectors or close
    versions with the last batch), in a real run (a dry run writes nothing), from files (a
    postgres source commits its watermark with its last batch), unchunked (chunks commit on their
    own), unthrottled (a pause must not hold written rows), without soft deletes (their merge reads
    the staging table), into a target that needs no ALTER (it would wait on this transaction's
    lock), and not pipelined behind the day before it in a backfill (that day's merge must commit
    first). The caller also leaves out a resumed run that already set cross-batch losers aside.
    """
    return (bool(spec.pipeline.key) and spec.pipeline.strategy not in ("append", "replace_partition", "scd2")
            and not dry_run and not cdc and not throttled and not pipelined and target_complete
            and not chunks.chunkable(spec) and merge.soft_deletes(spec) is None)


class Turns:
    """The batches' validations one at a time, in batch order, and room between two of them for the index drop.

    A validation may read the target (the known-rows sample) and holds that lock until it commits,
    so a DROP INDEX issued beside it would wait for it, up to the load's `lock_timeout`. `between`
    lets no new validation start, waits for the running one to end, and runs its block alone.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._running = self._held = self._failed = False

    @contextmanager
    def validation(self, turn: int) -> Iterator[None]:
        with self._cond:
            while (self._next < turn or self._held) and not self._failed:
                self._cond.wait()
            if self._failed:
                raise Aborted(f"batch {turn} not validated: an earlier batch failed")
            self._running = True
        try:
            yield
        except BaseException:
            with self._cond:
                self._running, self._failed = False, True   # the batches after it stop waiting for their turn
                self._cond.notify_all()
            raise
        with self._cond:
            self._running, self._next = False, turn + 1
            self._cond.notify_all()

    @contextmanager
    def between(self) -> Iterator[None]:
        with self._cond:
            self._held = True
            while self._running:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._held = False
                self._cond.notify_all()


class EarlyMerge:
    """One run's early merges: validations taken in turn, a session, its open transaction, the batches in it."""

    def __init__(self, url: str, spec: Spec, types: dict[str, transform.ColumnType], run_id: int, event: Event) -> None:
        self._url, self._spec, self._types, self._run_id, self._event = url, spec, types, run_id, event
        self.turns = Turns()   # one validation at a time, in batch order (run/stage_validate.py)
        self._stop = threading.Event()
        self._claims = threading.Lock()   # `stop` and the thread agree on how many batches it merges
        self._claimed = 0
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._tx: AbstractContextManager[Any] | None = None
        self._error: BaseException | None = None
        self._done: list[tuple[validate.Checked, merge.MergeCounts]] = []
        self._opened = self._into_empty = self._upserts = False   # the target as the early session found it (`_open`)
        self.dropped = False   # the load's indexes were dropped by `begin`
        self._batches: list[tuple[Future[validate.Checked], bool]] = []
        self._key: str | None = None   # the key's constraint, dropped by `begin` and owed back (pgstage/key_index.py)
        self._ahead = False   # `stop` was called with the key dropped: the last batch merges here too
        self._finisher: threading.Thread | None = None   # then merges it and makes the key again (`_finish`)
        self._later: list[Future[None]] = []   # the merged batches' tables, dropped by the pool (`drop_later`)

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def merges_all(self) -> bool:
        """Every batch of the run merges on this session (the key was dropped): phase 2 merges none."""
        return self._ahead

    @property
    def key_dropped(self) -> bool:
        """The key's constraint is dropped for this first load and not made again yet (pgstage/key_index.py)."""
        return self._key is not None

    @property
    def found_empty(self) -> bool | None:
        """Whether the target was empty when the early session opened (before its first write); None before."""
        return self._into_empty if self._opened else None

    def begin(self, conn: psycopg.Connection[Any], batches: list[tuple[Future[validate.Checked], bool]],
              staged_rows: int) -> None:
        """Every batch is staged: drop the indexes now if the load will, then merge all but the last on a thread.

        `batches`: each batch's validation and whether it is its file's last, in merge order.
        """
        if len(batches) < 2:
            return   # a lone batch has nothing to merge while another validates
        self._batches = batches
        if indexes.should_rebuild(conn, self._spec, staged_rows):
            self.dropped = True   # (set first: `indexes.rebuild` puts back whatever the ledger says is missing)
            with self.turns.between():
                indexes.drop_for_load(conn, self._spec, self._run_id)
                if merge.target_is_empty(conn, self._spec):
                    self._key = key_index.drop_for_load(conn, self._spec, self._run_id)
            if self._key is not None:
                self._event("key index dropped", index=self._key)
        self._thread = threading.Thread(target=self._merge, args=(batches[:-1],), name="pgstage early merge",
                                        daemon=True)
        self._thread.start()

    def _merge(self, batches: list[tuple[Future[validate.Checked], bool]]) -> None:
        spec, run_id = self._spec, self._run_id
        try:
            for future, last_of_file in batches:
                checked = future.result()   # a failed or cancelled validation stops the early merges
                with self._claims:
                    if self._stop.is_set():
                        return
                    self._claimed += 1   # this batch is merged here, whatever `stop` says from now on
                self._merge_one(self._conn or self._open(), checked, last_of_file)
        except BaseException as exc:   # the batches go back to phase 2, see `commit`
            self._error = exc

    def _merge_one(self, conn: psycopg.Connection[Any], checked: validate.Checked, last_of_file: bool,
                   dedup: bool | None = None) -> None:
        """One batch merged with its checkpoint in the open transaction. With the key dropped, its rows go in as they
        are (`dedup` False): the key's index, made again before the commit, tells whether a key repeated."""
        spec, run_id = self._spec, self._run_id
        began = time.time()
        m = merge.merge(conn, spec, self._types, checked, run_id, None, into_empty=self._into_empty,
                        upserts=self._upserts, dedup=False if self._key is not None and dedup is None else dedup)
        ledger.record_batch(conn, run_id, checked.staged, _merged(checked, m), "merged",
                            {"merge": (began, time.time())})
        if last_of_file:
            ledger.record_file(conn, spec.pipeline.name, checked.staged.source, run_id)
        self._done.append((checked, m))
        self._event("batch merged early", file=checked.staged.source.name, batch=checked.staged.batch_no,
                    inserted=m.inserted, updated=m.updated)   # uncommitted: nobody sees the rows yet
        faults.hit("merge.early")   # killed here: the server rolls the merges back

    def _open(self) -> psycopg.Connection[Any]:
        """The session and its transaction, opened with the first validated batch; what every early merge shares.

        With the key dropped, other writers are locked out first, and the target must still be empty under
        the lock; if it is not, the key is put back and the merges go as ever."""
        self._conn = conn = connect(self._url)
        apply_session_settings(conn, self._spec.load)
        self._tx = conn.transaction()
        self._tx.__enter__()
        if self._key is not None:
            key_index.lock_writers(conn, self._spec)
            if merge.target_is_empty(conn, self._spec):
                execute(conn, sql.SQL("SAVEPOINT pgstage_first_load"), label="key index: savepoint")
            else:   # a writer slipped in between the drop and the lock
                tx, self._tx = self._tx, None
                tx.__exit__(psycopg.Rollback, psycopg.Rollback(), None)
                self._put_key_back(conn, "the target was written before the lock")
                self._tx = conn.transaction()
                self._tx.__enter__()
        self._into_empty = merge.target_is_empty(conn, self._spec)
        self._upserts = target.upsert_arbiter(conn, self._spec)
        self._opened = True
        return conn

    def _put_key_back(self, conn: psycopg.Connection[Any], reason: str) -> None:
        """The key's constraint made again from the ledger (its own transaction, or a savepoint of the caller's)."""
        if self._key is None:
            return
        indexes.rebuild(conn, self._spec, keys_only=True)
        self._event("key index put back", index=self._key, reason=reason)
        self._key = None

    def give_back_key(self, conn: psycopg.Connection[Any]) -> None:
        """The early merges were given up or rolled back with the key dropped: make it again now, on `conn`,
        before any batch merges elsewhere (a no-op otherwise)."""
        self.close()
        self._put_key_back(conn, "the early merges were given up")

    def stop(self) -> int:
        """The run goes ahead: take no further batch. Returns how many of the first batches this session merges
        (done, or under way), which phase 2 may leave to `commit`; 0 when it already failed, and then its
        transaction is rolled back now, before phase 2 merges the same batches."""
        with self._claims:
            if self._key is not None and self._error is None:
                self._ahead = True   # every batch merges here: other sessions could not write the target
                # meanwhile phase 2 drops the staged tables, which no merge reads (run/merge_batches.py)
                self._finisher = threading.Thread(target=self._finish, name="pgstage first load", daemon=True)
                self._finisher.start()
                return len(self._batches)
            self._stop.set()
            claimed = self._claimed if self._error is None else 0
        if not claimed:
            self.close()
        return claimed

    def commit(self) -> list[validate.Checked]:
        """After `stop`: wait for the merge under way, then commit the batches merged and return them in merge
        order; [] when the early merges were given up (rolled back: their batches must merge in phase 2)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._finisher is not None:
            self._finisher.join()
        conn, tx = self._conn, self._tx   # (read after `_finish`, which opens the session if the thread merged none)
        if self._error is None and conn is not None and tx is not None and self._done:
            try:
                execute(conn, sql.SQL("SELECT 1"), label="merge: early merge session alive?")
            except BaseException as exc:   # e.g. idle_in_transaction_session_timeout during a long validation
                self._error = exc
        if self._error is not None or conn is None or tx is None or not self._done:
            if self._error is not None:
                self._event("early merge given up", reason=str(self._error))
            self.close()
            return []
        for _ in self._done:   # the crash suite's points, once a batch as for a batch merged in phase 2
            faults.hit("merge.commit")
        self._tx = None
        tx.__exit__(None, None, None)   # the commit: a failure here is the run's, and a retry resumes from the ledger
        for _ in self._done:
            faults.hit("merge.after")
        for checked, m in self._done:
            self._event("batch merged", file=checked.staged.source.name, batch=checked.staged.batch_no,
                        inserted=m.inserted, updated=m.updated, unchanged=m.unchanged, stale=m.stale,
                        deleted=m.deleted, early=True)
        self.close()
        return [checked for checked, _ in self._done]

    def _finish(self) -> None:
        """The finisher thread: once the early merges are done, `_finish_first_load`; a failure is `commit`'s to see."""
        if self._thread is not None:
            self._thread.join()
        if self._error is None:
            try:
                self._finish_first_load()
            except BaseException as exc:
                self._error = exc

    def _finish_first_load(self) -> None:
        """With the key dropped: the batches the thread left (the last one), then the key made again before the commit.

        Should the key's index refuse a repeated key, the savepoint undoes the inserts and every batch merges
        again with one row per key, under the key made on the empty table."""
        conn = self._conn or self._open()
        for future, last_of_file in self._batches[len(self._done):]:
            self._merge_one(conn, future.result(), last_of_file)
        try:
            self._put_key_back(conn, "the first load is merged")
        except DatabaseError as exc:
            if exc.sqlstate != UNIQUE_VIOLATION:
                raise
            execute(conn, sql.SQL("ROLLBACK TO SAVEPOINT pgstage_first_load"), label="key index: undo the inserts")
            self._event("first load repeats a key", index=self._key, batches=len(self._done))
            self._done = []
            self._put_key_back(conn, "a key repeats: the batches merge again, one row per key")
            self._upserts = True
            for future, last_of_file in self._batches:
                self._merge_one(conn, future.result(), last_of_file, dedup=None)
        faults.hit("key.rebuilt")   # killed here: the key's re-creation rolls back with the rows, the ledger owes it

    def drop_later(self, dropping: Future[None]) -> None:
        """A drop of merged batches' tables under way on the pool, left to run beside the index rebuilds; `close`
        waits for it (a failed drop leaves orphans, which the run's end and the next run drop)."""
        self._later.append(dropping)

    def close(self) -> None:
        """Roll back whatever is still open (a refused or failed run) and close the session; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._finisher is not None:
            self._finisher.join()
        wait(self._later)
        conn, tx, self._conn, self._tx = self._conn, self._tx, None, None
        if conn is not None and roll_back_and_close(conn, tx):
            self._event("early merge rolled back", batches=len(self._done))
