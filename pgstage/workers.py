"""Several database sessions for the batches of one run, and commits in batch order.

PostgreSQL runs a statement on one core (validation aside, which uses parallel query). A run
with several batches validates and merges them on `load.workers` sessions at once, one thread
each (psycopg waits for the server without holding the GIL), while the main session stages
the next batch. Merges may finish in any order but commit in batch order: each waits for its
predecessor's commit before its own, so a crash always leaves a prefix of the run's batches
merged, which is what resuming expects. Batches of one run never merge the same key (the
cross-batch losers are set aside first), so concurrent merges never wait on each other's rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, TypeVar

import psycopg

from pgstage.db import connect
from pgstage.safety import apply_session_settings
from pgstage.spec import LoadSection

T = TypeVar("T")


class Aborted(Exception):
    """A batch gave up its commit because an earlier batch of the run failed."""


class Workers:
    """A pool of sessions, each owned by one thread, opened on first use and closed on exit."""

    def __init__(self, url: str, load: LoadSection, name: str = "") -> None:
        self._url = url
        self._load = load
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[psycopg.Connection[Any]] = []
        self.closed = False
        # The run's name in its threads' names: what a profiler or a debugger shows.
        self._pool = ThreadPoolExecutor(max_workers=load.workers, thread_name_prefix=f"pgstage {name}".rstrip())

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Wait for the jobs, cancel those not started, close every session."""
        self.closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        for conn in self._conns:
            conn.close()

    def submit(self, job: Callable[[psycopg.Connection[Any]], T]) -> Future[T]:
        return self._pool.submit(self._run, job)

    def _run(self, job: Callable[[psycopg.Connection[Any]], T]) -> T:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self._url)
            apply_session_settings(conn, self._load)
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        elif conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()   # a job that failed mid-transaction leaves nothing behind for the next
        return job(conn)


class InOrder:
    """Turn-taking for commits: batch i commits after batch i - 1 did; a failure stops the rest."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0
        self._failed = False

    def wait(self, index: int) -> None:
        with self._cond:
            while self._next < index and not self._failed:
                self._cond.wait()
            if self._failed:
                raise Aborted(f"batch {index} not committed: an earlier batch failed")

    def committed(self, index: int) -> None:
        with self._cond:
            self._next = index + 1
            self._cond.notify_all()

    def failed(self) -> None:
        with self._cond:
            self._failed = True
            self._cond.notify_all()


def results(futures: Iterable[Future[T]]) -> list[T]:
    """Every job's result in submission order; once all ended, the first real failure is raised."""
    futures = list(futures)
    wait(futures)
    failures = [f.exception() for f in futures if f.exception() is not None]
    first = next((e for e in failures if not isinstance(e, Aborted)), failures[0] if failures else None)
    if first is not None:
        raise first
    return [f.result() for f in futures]
