"""replace_partition (delete + insert): the swap's DELETE, begun while the run's last batch validates.

The swap's transaction deletes the partition's rows, then inserts the new ones and commits them
with the last batch's checkpoint. The DELETE needs nothing the validation produces, so a run
opens that transaction early on a session of its own, as soon as its last batch is staged, and
deletes there while the pool validates; the swap then goes on in the same transaction, on the
same session (`take`). Readers still see the old day until the commit and the new day after it.

The transaction is rolled back (`close`) if anything refuses or fails the run before the swap
commits: the reject threshold, a blocking volume anomaly, a failed validation, an error, a retry.
A kill -9 drops the session and the server rolls it back. The caller starts it only where no DDL
of the run can wait on its lock (see `eligible` and `_plan_merge` in run/merge_batches.py), and
gives it up (`abandon`) if the run's plan changes its mind. Anything that goes wrong on this session itself
(a lock timeout, the idle-in-transaction timeout while a long validation runs) only gives the
DELETE back to the swap, which runs it as before: the early start is an optimisation, never a
new way to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import psycopg
from psycopg import sql

from pgstage import faults
from pgstage.db import connect, execute, roll_back_and_close
from pgstage.pipeline import partition
from pgstage.pipeline.merge.replace_partition import build_delete
from pgstage.safety import apply_session_settings
from pgstage.spec import Spec

Event = Callable[..., None]


def eligible(spec: Spec, w: partition.Window | None, *, dry_run: bool, target_complete: bool, throttled: bool,
             pipelined: bool) -> bool:
    """Whether a run may delete its partition before the swap.

    Only the delete + insert path of a real run (a dry run never deletes; the native path
    deletes no rows), into a target that exists with every column (`target.ensure` would alter
    it, waiting on the DELETE's lock), unthrottled (a throttle pause must not hold the day's
    rows), and not pipelined behind the day before it in a backfill (that day's swap could wait
    on these rows while this run waits for that day: a wait PostgreSQL cannot see as a deadlock).
    """
    part = spec.pipeline.partition
    return (w is not None and part is not None and not part.native and not dry_run and target_complete
            and not throttled and not pipelined)


class EarlyDelete:
    """One run's early DELETE: a session, its open transaction, and how many rows it removed."""

    def __init__(self, url: str, spec: Spec, w: partition.Window, event: Event) -> None:
        self._url, self._spec, self._window, self._event = url, spec, w, event
        self._thread: threading.Thread | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._tx: AbstractContextManager[Any] | None = None
        self._error: BaseException | None = None
        self._taken = False
        self._closed = False
        self.deleted = 0

    def start(self) -> None:
        """Connect and DELETE on a thread of its own: the caller goes on waiting for the validation."""
        self._thread = threading.Thread(target=self._delete, name="pgstage early delete", daemon=True)
        self._thread.start()

    def _delete(self) -> None:
        try:
            self._conn = connect(self._url)
            apply_session_settings(self._conn, self._spec.load)
            self._tx = self._conn.transaction()
            self._tx.__enter__()
            self.deleted = execute(self._conn, build_delete(self._spec, self._window),
                                   label="merge: delete partition (early)").rowcount
            self._event("early delete", deleted=self.deleted)   # uncommitted: readers still see the old day
            faults.hit("merge.early_delete")   # killed here: the server rolls the DELETE back
        except BaseException as exc:   # given back to the swap, see `take`
            self._error = exc

    @property
    def started(self) -> bool:
        """Begun, and neither given up nor closed since."""
        return self._thread is not None and not self._closed

    def take(self) -> psycopg.Connection[Any] | None:
        """The session, its transaction open with the DELETE done, for the swap to go on with; or None
        when the early DELETE failed or its session is gone, and the swap must delete by itself."""
        if not self.started:
            return None
        assert self._thread is not None
        self._thread.join()
        conn = self._conn
        if self._error is None and conn is not None:
            try:
                execute(conn, sql.SQL("SELECT 1"), label="merge: early delete session alive?")
            except BaseException as exc:   # e.g. idle_in_transaction_session_timeout during a long validation
                self._error = exc
        if self._error is not None or conn is None:
            self._event("early delete given up", reason=str(self._error))
            self.close()
            return None
        self._taken = True
        self._event("partition deleted early", deleted=self.deleted)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection[Any]]:
        """The swap's rest inside the early transaction: committed if the block ends well, else rolled back."""
        assert self._taken and self._conn is not None and self._tx is not None
        tx, self._tx = self._tx, None
        try:
            yield self._conn
        except BaseException as exc:
            tx.__exit__(type(exc), exc, exc.__traceback__)
            raise
        tx.__exit__(None, None, None)

    def abandon(self, why: str) -> None:
        """Roll the DELETE back now: the run's plan needs the target's locks (DDL) after all."""
        if self.started and not self._taken:
            self._event("early delete given up", reason=why)
        self.close()

    def close(self) -> None:
        """Roll back whatever is still open (a refused or failed run) and close the session; idempotent."""
        self._closed = True
        if self._thread is not None:
            self._thread.join()
        conn, tx, self._conn, self._tx = self._conn, self._tx, None, None
        if conn is not None and roll_back_and_close(conn, tx):
            self._event("early delete rolled back", deleted=self.deleted)
