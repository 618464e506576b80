"""One error tree: every failure a user can see says what, where and what to do.

The CLI maps these to exit codes in one place (`cli/_errors.py`); library callers catch
`PgstageError` and read `.exit_code`, `.location` and `.hint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    exit_code: int = 1

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        where = str(self.location)
        text = f"{where}: {self.message}" if where else self.message
        return f"{text}\n  hint: {self.hint}" if self.hint else text


@dataclass
class SpecError(PgstageError):
    """The pipeline spec is wrong; `problems` lists every problem found, not just the first."""

    problems: tuple[str, ...] = ()
    exit_code: int = 2

    def __str__(self) -> str:
        if not self.problems:
            return super().__str__()
        body = "\n".join(f"  {p}" for p in self.problems)
        return f"{self.message}\n{body}" + (f"\n  hint: {self.hint}" if self.hint else "")


@dataclass
class UsageError(PgstageError):
    """A command was called in a way that cannot work (bad option, bad date)."""

    exit_code: int = 2


@dataclass
class SourceError(PgstageError):
    """A source file cannot be read at all (missing, empty, unreadable)."""


@dataclass
class HeaderMismatch(SourceError):
    """The source's header does not provide what the spec needs: a usage problem (exit 2)."""

    exit_code: int = 2


@dataclass
class TargetMismatch(PgstageError):
    """An existing target table disagrees with the spec (column missing, other type, no key)."""

    exit_code: int = 2


@dataclass
class RejectLimitExceeded(PgstageError):
    """Too many rejected rows: nothing was merged, the rejects were recorded."""

    exit_code: int = 3


@dataclass
class PipelineLocked(PgstageError):
    """Another run holds this pipeline's lock."""

    exit_code: int = 4


@dataclass
class AnomalyBlocked(PgstageError):
    """The run's volume is far outside its history and `[anomaly] action = "block"`: nothing was merged."""

    exit_code: int = 5


@dataclass
class ReconcileDifferences(PgstageError):
    """`pgstage reconcile` found the target holding something other than what the source says."""

    exit_code: int = 6


@dataclass
class DatabaseError(PgstageError):
    """PostgreSQL refused something; the message is PostgreSQL's, in the spec's terms."""


@dataclass
class MissingDependency(PgstageError):
    """An optional extra is needed; the hint names the pip command."""

    exit_code: int = 2


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
