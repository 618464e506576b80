"""pgstage: load files into PostgreSQL fast and safely.

The public API is what this module exports; everything else may change.
"""

from pgstage.backfill import BackfillReport, backfill
from pgstage.catalog import TableDescription, describe_table
from pgstage.db import connection_env
from pgstage.errors import (
    AnomalyBlocked,
    DatabaseError,
    ExitStatus,
    HeaderMismatch,
    MissingDependency,
    PgstageError,
    PipelineLocked,
    RejectLimitExceeded,
    SourceError,
    SpecError,
    TargetMismatch,
    UntrustedIndexDefinition,
    UsageError,
)
from pgstage.ops.alerts import Notice, notify
from pgstage.report import Counts, FileReport, RunReport
from pgstage.run import run
from pgstage.spec import Spec, load_spec, parse_spec

__all__ = [
    "AnomalyBlocked", "BackfillReport", "Counts", "DatabaseError", "ExitStatus", "FileReport", "HeaderMismatch", "MissingDependency", "PgstageError", "PipelineLocked",
    "RejectLimitExceeded", "RunReport", "SourceError", "Spec", "SpecError", "TargetMismatch", "UntrustedIndexDefinition", "UsageError",
    "backfill", "load_spec", "parse_spec", "run",
    "TableDescription", "connection_env", "describe_table",
    "Notice", "notify",
]
