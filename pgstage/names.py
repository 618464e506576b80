"""The names pgstage gives things in the database, each defined once.

The ledger's schema, the audit columns it adds to a target, the fields it adds to a staged
postgres source, and its own tables' names, which `ledger.orphan_tables` recognizes by the
same prefixes.
"""

from __future__ import annotations

LEDGER_SCHEMA = "pgstage"

# Audit columns of a target (SPEC §3; target.py creates them).
LOADED_AT = "_loaded_at"      # first load
UPDATED_AT = "_updated_at"    # last change
RUN_ID = "_run_id"            # the run that last changed the row
ROW_HASH = "_row_hash"        # a hash of the source record that produced the row (pipeline/known.py)
DELETED_AT = "_deleted_at"    # a soft-deleted row's deletion time (a postgres source, on_delete = "mark")
AUDIT_COLUMNS = (LOADED_AT, UPDATED_AT, RUN_ID)   # every target has these

# Fields a postgres source adds to what it stages (pipeline/extract/postgres.py); the colon
# keeps them apart from any column of the source table.
SOURCE_CHANGED_AT = "pgstage:changed_at"    # greatest(inserted_at, updated_at, deleted_at): the watermark's input
SOURCE_DELETED_AT = "pgstage:deleted_at"    # the source's deletion time, when it marks deletes

KNOWN = "_known"              # in a checked table: the record is known unchanged (pipeline/known.py)

# The run's own tables in the ledger schema. `_stg_<run>_<file>_<batch>` and
# `_chk_<run>_<file>_<batch>` live for one batch; `_dup_<run>` until the run succeeds.
STAGED_PREFIX = "_stg"
CHECKED_PREFIX = "_chk"
DUPLICATES_PREFIX = "_dup"
COLLECTOR_PREFIX = "_rp"      # `_rp_<run>`: rows a replace_partition or a replacing append run collects
SEEN_PREFIX = "_seen"         # `_seen_<run>`: the keys an scd2 run brought, for on_missing


def staged_prefix(run_id: int, file_no: int) -> str:
    """The name of a file's staging tables, before the batch number."""
    return f"{STAGED_PREFIX}_{run_id}_{file_no}"


def checked_table(run_id: int, file_no: int, batch_no: int) -> str:
    return f"{CHECKED_PREFIX}_{run_id}_{file_no}_{batch_no}"


def duplicates_table(run_id: int) -> str:
    return f"{DUPLICATES_PREFIX}_{run_id}"


# For the run's own tables (staging, checked, known, beaten), which live minutes and are read
# in full: autovacuum would vacuum and analyze each one after its COPY (a 1M-row table passes
# every threshold), spending a core the load needs, and a DROP waits a second
# (deadlock_timeout) for the worker to be cancelled. The merge analyzes what it needs itself.
NO_AUTOVACUUM = " WITH (autovacuum_enabled = false, toast.autovacuum_enabled = false)"
