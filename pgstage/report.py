"""What a run returns: frozen counts that must balance (SPEC §5), and the report around them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pgstage.errors import AccountingError


@dataclass(frozen=True)
class Counts:
    """read = rejected + valid; valid = duplicate + inserted + updated + unchanged + stale."""

    read: int = 0
    rejected: int = 0
    valid: int = 0
    duplicate: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0

    def __post_init__(self) -> None:
        if self.read != self.rejected + self.valid:
            raise AccountingError(f"read {self.read} != rejected {self.rejected} + valid {self.valid}")

    def check_merged(self) -> None:
        """The second identity, which holds once every valid row has been merged (a succeeded run)."""
        merged = self.duplicate + self.inserted + self.updated + self.unchanged + self.stale
        if self.valid != merged:
            raise AccountingError(f"valid {self.valid} != duplicate + inserted + updated + unchanged + stale = {merged}")

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(**{k: getattr(self, k) + getattr(other, k) for k in self.__dataclass_fields__})

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class FileReport:
    path: str
    status: str                     # loaded | skipped
    counts: Counts = Counts()
    ignored_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunReport:
    run_id: int | None
    pipeline: str
    partition: str | None
    status: str                     # succeeded | skipped | rejected_threshold | blocked | failed
    counts: Counts
    rejects_by_rule: dict[str, int] = field(default_factory=dict)
    duration_s: float = 0.0
    target: str = ""
    files: tuple[FileReport, ...] = ()
    message: str | None = None
    dry_run: bool = False
    warnings: tuple[str, ...] = ()      # things that look wrong though nothing failed (key_warnings)
    merge_sql: str | None = None        # dry runs: the merge statement of the first batch
    sample_rejects: tuple[dict[str, Any], ...] = ()
    anomaly: dict[str, Any] | None = None       # the volume verdict (pgstage/ops/anomalies.py)
    reconcile: dict[str, Any] | None = None     # `[load] reconcile = "after_run"`'s result (pgstage/ops/reconcile.py)
    throttled_s: dict[str, float] = field(default_factory=dict)   # paused seconds by reason (pgstage.pauses)

    def __post_init__(self) -> None:
        if self.status == "succeeded":
            for counts in (self.counts, *(f.counts for f in self.files)):
                counts.check_merged()

    def as_dict(self) -> dict[str, Any]:
        """The `--json` document (SPEC §6 keys, plus files)."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "partition": self.partition,
            "status": self.status,
            "rows": self.counts.as_dict(),
            "rejects_by_rule": dict(self.rejects_by_rule),
            "duration_s": round(self.duration_s, 3),
            "target": self.target,
            "files": [{"path": f.path, "status": f.status, "rows": f.counts.as_dict(),
                       "ignored_fields": list(f.ignored_fields)} for f in self.files],
            "message": self.message,
            "dry_run": self.dry_run,
            "warnings": list(self.warnings),
            **({"merge_sql": self.merge_sql} if self.merge_sql else {}),
            **({"sample_rejects": list(self.sample_rejects)} if self.sample_rejects else {}),
            **({"anomaly": self.anomaly} if self.anomaly else {}),
            **({"reconcile": self.reconcile} if self.reconcile else {}),
            **({"throttled_s": dict(self.throttled_s)} if self.throttled_s else {}),
        }


# More than this share of the valid records collapsing as `duplicate` says the key is wrong.
DUPLICATE_SHARE_WARNING = 0.5


def key_warnings(counts: Counts, key: tuple[str, ...], version: str | None) -> tuple[str, ...]:
    """A warning when most valid records collapse on the key of a strategy without `version`.

    With a version column, repeated keys are expected (a change feed carries every update); without
    one, a key that most records share is almost always a wrong key, and the run would otherwise
    succeed with exit 0 while keeping a handful of rows.
    """
    if version is not None or not key or counts.duplicate <= counts.valid * DUPLICATE_SHARE_WARNING:
        return ()
    spelled = ", ".join('"' + k.replace("\\", "\\\\").replace('"', '\\"') + '"' for k in key)
    return (f"{counts.duplicate:,} of {counts.valid:,} records share a key with a later record:"
            f" is `key = [{spelled}]` right?",)
