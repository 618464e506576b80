"""One error tree: every failure a user can see says what, where and what to do.

The CLI maps these to exit statuses (`ExitStatus`) in one place (`cli/_errors.py`); library callers catch
`PgstageError` and read `.exit_code`, `.location` and `.hint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar
from enum import IntEnum


class ExitStatus(IntEnum):
    """The `pgstage` command's exit statuses (SPEC §6), named once; each error class carries its own."""

    OK = 0
    FAILED = 1            # a run failed (database, source), or a bug
    USAGE = 2             # bad spec, option, header or target: fix the input, do not retry
    REJECT_LIMIT = 3      # too many rejects: nothing merged
    LOCKED = 4            # another run holds the pipeline
    ANOMALY = 5           # blocked by a volume anomaly: nothing merged (pgstage/ops/anomalies.py)
    DIFFERENCES = 6       # `pgstage reconcile` found differences (pgstage/ops/reconcile.py)
    INTERRUPTED = 130     # Ctrl-C


@dataclass(frozen=True)
class Location:
    """Where a problem is: any of spec line, file, record, column, rule."""

    file: str | None = None
    line: int | None = None
    record: int | None = None
    column: str | None = None
    rule: str | None = None

    def __str__(self) -> str:
        parts: list[str] = []
        if self.file:
            parts.append(f"{self.file}:{self.line}" if self.line else self.file)
        if self.record is not None:
            parts.append(f"record {self.record}")
        if self.column:
            parts.append(f"column {self.column}")
        if self.rule:
            parts.append(f"rule {self.rule}")
        return ", ".join(parts)


@dataclass
class PgstageError(Exception):
    """Root of every error pgstage raises on purpose."""

    message: str
    location: Location = field(default_factory=Location)
    hint: str | None = None
    exit_code: ClassVar[ExitStatus] = ExitStatus.FAILED    # a subclass names its own: `class X(..., exit_code=...)`

    def __init_subclass__(cls, exit_code: ExitStatus | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = str(self.location)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


@dataclass
class SpecError(PgstageError, exit_code=ExitStatus.USAGE):
    """The pipeline spec is wrong; `problems` lists every problem found, not just the first."""

    problems: tuple[str, ...] = ()

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        body = "\n".join(f"  {p}" for p in self.problems)
        return f"{self.message}\n{body}" + (f"\n  hint: {self.hint}" if self.hint else "")


@dataclass
class UsageError(PgstageError, exit_code=ExitStatus.USAGE):
    """A command was called in a way that cannot work (bad option, bad date)."""


@dataclass
class SourceError(PgstageError):
    """A source file cannot be read at all (missing, empty, unreadable)."""


@dataclass
class HeaderMismatch(SourceError, exit_code=ExitStatus.USAGE):
    """The source's header does not provide what the spec needs: a usage problem (exit 2)."""


@dataclass
class TargetMismatch(PgstageError, exit_code=ExitStatus.USAGE):
    """An existing target table disagrees with the spec (column missing, other type, no key)."""


@dataclass
class RejectLimitExceeded(PgstageError, exit_code=ExitStatus.REJECT_LIMIT):
    """Too many rejected rows: nothing was merged, the rejects were recorded."""


@dataclass
class PipelineLocked(PgstageError, exit_code=ExitStatus.LOCKED):
    """Another run holds this pipeline's lock."""


@dataclass
class ThrottleTimeout(PgstageError):
    """Paused longer than `load.throttle_timeout`: the run fails; the next one resumes at its checkpoint."""


@dataclass
class ThrottleQueryFailed(PgstageError):
    """`load.throttle_query` cannot be run: the run stops rather than load unguarded."""


# SQLSTATEs pgstage decides on (PostgreSQL's Appendix A), named once.
DATA_EXCEPTION = "22"          # a class: a value that does not fit its type
INTEGRITY_VIOLATION = "23"     # a class: a constraint refused a row
NUMERIC_OVERFLOW = "22003"
UNIQUE_VIOLATION = "23505"
QUERY_CANCELED = "57014"       # statement_timeout, or a cancel request
LOCK_NOT_AVAILABLE = "55P03"   # lock_timeout elapsed (pgstage migrate tries a DDL again)
# The faults a run retries from its last checkpoint (docs/guarantees.md, "Transient faults"),
# by SQLSTATE and nothing else: a statement timeout, a full disk (53100) or exhausted memory
# (53200) would fail the same way again, so they fail the run at once with their message.
TRANSIENT_SQLSTATES = frozenset({
    "08000", "08001", "08003", "08004", "08006",   # connection exception: the connection was lost or refused
    "57P01", "57P02", "57P03",                      # admin shutdown, crash shutdown, cannot connect now (restart)
    "40001", "40P01",                               # serialization failure, deadlock detected
    "55P03",                                        # lock not available: lock_timeout elapsed
    "53300",                                        # too many connections
})


@dataclass(frozen=True)
class Diagnostics:
    """PostgreSQL's own fields of an error (psycopg's `diag`), kept so callers need not dig in `__cause__`."""

    message: str | None = None      # the primary message
    detail: str | None = None
    schema: str | None = None
    table: str | None = None
    column: str | None = None
    datatype: str | None = None
    constraint: str | None = None


@dataclass
class AnomalyBlocked(PgstageError, exit_code=ExitStatus.ANOMALY):
    """The run's volume is far outside its history and `[anomaly] action = "block"`: nothing was merged."""


@dataclass
class ReconcileDifferences(PgstageError, exit_code=ExitStatus.DIFFERENCES):
    """`pgstage reconcile` found the target holding something other than what the source says."""


@dataclass
class DatabaseError(PgstageError):
    """PostgreSQL refused something; the message is PostgreSQL's, in the spec's terms.

    `sqlstate` is the error's code (None when the client lost the server before any answer);
    `diagnostics` the fields PostgreSQL sent with it.
    """

    sqlstate: str | None = None
    diagnostics: Diagnostics = field(default_factory=Diagnostics)

    @property
    def sqlstate_class(self) -> str | None:
        """The code's first two characters: 22 data exception, 23 integrity violation, 08 connection, ..."""
        return self.sqlstate[:2] if self.sqlstate else None


@dataclass
class UntrustedIndexDefinition(PgstageError):
    """A definition in pgstage.index_rebuilds is not one pgstage wrote: it is refused, never run."""


@dataclass
class MigrationFailed(PgstageError):
    """`pgstage migrate` stopped (a step failed, a post-check, an undo that is not possible); re-running resumes."""


@dataclass
class MissingDependency(PgstageError, exit_code=ExitStatus.USAGE):
    """An optional extra is needed; the hint names the pip command."""


@dataclass
class ConnectionFailed(DatabaseError):
    """The database could not be reached; retried only once a run has started (a restart mid-run)."""


class Transient:
    """Marker mixin: the retry loop retries errors that carry it, and no others."""


@dataclass
class TransientDatabaseError(DatabaseError, Transient):
    """Connection lost, deadlock, serialization failure: safe to retry from the last checkpoint."""


class AccountingError(AssertionError):
    """The counts of a run do not balance: always a bug in pgstage, never the user's fault."""
