"""A source file's SHA-256, computed once: by whoever asks first, or ahead of time by a thread (`Ahead`).

Hashing a 214 MB file costs ~0.25 s of CPU, and a run used to pay it before its first statement.
The ledger needs the digest only to skip a file loaded before and to resume one (both before the
file is staged, and only when the ledger holds the file's name), and in every batch and file row
it writes. So a run hashes its files in a thread (`Ahead`) while it connects and stages, and each
reader of `Digest.value()` waits for the digest where it first needs it; hashlib and the file
reads release the GIL, so the thread costs the stager little.

A file that changes under the run must not get a digest that the *new* bytes match while the
target holds the old ones (the next run would skip the new bytes). The file's identity (device,
inode, size, modification time) is noted when the run resolves it, before anything is staged;
the hash refuses a file whose identity differs from it before or after it is read: the run
fails with a SourceError before anything is merged. A change after the hash ends leaves a digest
of the earlier bytes, which the changed file no longer matches: the next run loads it again.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from pgstage.errors import Location, PgstageError, SourceError

CHUNK = 1 << 20                    # bytes per read: memory stays bounded whatever the file's size
THREAD_NAME = "pgstage-hash"

_PENDING, _RUNNING, _DONE = "pending", "running", "done"

Stamp = tuple[int, int, int, int]   # (st_dev, st_ino, st_size, st_mtime_ns)


def stamp_of(st: os.stat_result) -> Stamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Digest:
    """The SHA-256 hex digest of one file's stored bytes, computed at most once (thread-safe).

    `value()` returns it, computing it in the calling thread if nobody has started, else waiting
    for the thread that has.
    """

    def __init__(self, path: Path | None, stamp: Stamp | None, value: str | None = None) -> None:
        self.path, self.stamp = path, stamp
        self._cond = threading.Condition()
        self._state = _DONE if value is not None else _PENDING
        self._value = value
        self._error: PgstageError | None = None

    @classmethod
    def known(cls, value: str) -> Digest:
        """A digest computed elsewhere (a zip member's, a postgres extract's token)."""
        return cls(None, None, value)

    @classmethod
    def of(cls, path: Path) -> Digest:
        """The digest of `path`, not computed yet; its identity is noted now (see the module's docstring)."""
        try:
            return cls(path, stamp_of(path.stat()))
        except OSError as exc:
            raise SourceError(f"cannot read it: {exc.strerror}", location=Location(file=str(path))) from None

    def __repr__(self) -> str:   # never waits: SourceFile's repr shows it
        return f"Digest({self._value!r})" if self._value is not None else f"Digest({self.path}, {self._state})"

    @property
    def ready(self) -> bool:
        return self._state == _DONE

    def value(self) -> str:
        """The digest; raises SourceError if the file could not be read or changed under the run."""
        while True:
            with self._cond:
                while self._state == _RUNNING:
                    self._cond.wait()
                if self._state == _DONE:
                    if self._error is not None:
                        raise self._error
                    assert self._value is not None
                    return self._value
                self._state = _RUNNING
            self._compute(None)   # here, in the caller's thread; loops once to read the result

    def _claim(self) -> bool:
        with self._cond:
            if self._state != _PENDING:
                return False
            self._state = _RUNNING
            return True

    def _compute(self, stop: threading.Event | None) -> None:
        """Hash the file (after `_claim` or in `value`); with `stop` set midway, hand it back unhashed."""
        value, error = None, None
        try:
            value = self._hash(stop)
        except PgstageError as exc:
            error = exc
        except Exception as exc:
            error = SourceError(f"cannot hash it: {exc!r}", location=Location(file=str(self.path)))
        except BaseException:   # (KeyboardInterrupt in a caller's thread) hand it back, never leave waiters hanging
            with self._cond:
                self._state = _PENDING
                self._cond.notify_all()
            raise
        with self._cond:
            stopped = value is None and error is None
            self._state = _PENDING if stopped else _DONE
            self._value, self._error = value, error
            self._cond.notify_all()

    def _hash(self, stop: threading.Event | None) -> str | None:
        assert self.path is not None
        name = str(self.path)
        digest = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        try:
            with self.path.open("rb") as handle:
                before = stamp_of(os.fstat(handle.fileno()))
                while n := handle.readinto(buffer):
                    if stop is not None and stop.is_set():
                        return None
                    digest.update(view[:n])   # hashlib releases the GIL for updates this large
                after = stamp_of(os.fstat(handle.fileno()))
        except OSError as exc:
            raise SourceError(f"cannot read it: {exc.strerror}", location=Location(file=name)) from None
        if self.stamp is not None and not before == after == self.stamp:
            raise SourceError("the file changed while the run read it (its size, modification time or inode"
                              " differ from when the run started): nothing of it was merged",
                              location=Location(file=name),
                              hint="run again once the file is complete (write it elsewhere and rename it into place)")
        return digest.hexdigest()


class Ahead:
    """One thread that hashes the run's pending digests in load order, stopped and joined on exit.

    The thread never outlives the `with` block: a digest it is hashing when the block ends is
    handed back unhashed (a later `value()` computes it), and its errors are kept for `value()`.
    """

    def __init__(self, digests: Iterable[Digest]) -> None:
        self._digests = [d for d in digests if not d.ready]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ahead:
        if self._digests:
            self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _work(self) -> None:
        for digest in self._digests:
            if self._stop.is_set():
                return
            if digest._claim():
                digest._compute(self._stop)
