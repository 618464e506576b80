"""Merge: one module per strategy; this package's names are the ones the run calls.

- `keyed`: insert_only, upsert, upsert_if_newer — dedup on the key, classify against the
  target (insert / update / unchanged / stale), write only what changes;
- `replace_partition`: collect the run's rows, then swap its partition in one transaction;
- `scd2`: a history of versions per key;
- `append`: every record a row, by file and record number;
- `surrogate`: the surrogate key column (uuid or hash) any keyed strategy may add.

`merge()` and `predict()` pick the strategy's module, so the run's phases do not branch on it.
The strategies' modules and keyed's names are imported when first used (`__getattr__`): a run
that merges nothing, such as one whose files were all loaded before, needs none of them.
"""

from __future__ import annotations

from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from pgstage.pipeline.merge import append, replace_partition, scd2
    from pgstage.pipeline.merge.keyed import (MIN_WRITE_SHARE, WRITE_SAMPLE, MergeCounts, Records, batches_overlap,
                                              build_beaten, build_has_duplicates, build_insert, build_merge,
                                              build_overlap, build_prediction, build_resolve, build_upsert,
                                              build_write_sample, find_beaten, has_duplicates, soft_deletes,
                                              target_columns, target_is_empty)
    from pgstage.pipeline.transform import ColumnType
    from pgstage.pipeline.validate import Checked
    from pgstage.spec import Spec

__all__ = ["append", "MIN_WRITE_SHARE", "WRITE_SAMPLE", "MergeCounts", "Records", "batches_overlap", "build_beaten", "build_has_duplicates",
           "build_insert", "build_merge", "build_overlap", "build_prediction", "build_resolve", "build_upsert",
           "build_write_sample", "find_beaten", "has_duplicates", "merge", "predict", "replace_partition", "replaces_partition", "scd2",
           "resolve_rejects", "soft_deletes", "target_columns", "target_is_empty"]


_MODULES = ("append", "keyed", "replace_partition", "scd2")


def __getattr__(name: str) -> Any:
    """`merge.scd2` and the like: the strategy's module, imported now (it is then an attribute of the package);
    `merge.MergeCounts` and keyed's other names in `__all__`: from keyed."""
    if name in _MODULES:
        return import_module(f"{__name__}.{name}")
    if name in __all__:
        return getattr(import_module(f"{__name__}.keyed"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def replaces_partition(spec: Spec) -> bool:
    return spec.pipeline.strategy == "replace_partition"


def merge(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
          run_id: int, beaten: str | None = None, *, into_empty: bool = False, upserts: bool = False,
          as_of: datetime | None = None, replacing: bool = False, records: Records | None = None,
          dedup: bool | None = None) -> MergeCounts:
    """Merge one batch inside the caller's transaction by the spec's strategy (see each module).

    `as_of`: scd2's valid_from for rows without a version (the run decides it once); `replacing`:
    append collects the batch, its file's earlier rows are replaced with the file's last batch.
    `records`, `dedup`: one chunk of a keyed strategy's batch (pipeline/chunks.py).
    """
    from pgstage.pipeline.merge import append, keyed, replace_partition, scd2

    if spec.pipeline.strategy == "append":
        return append.merge(conn, spec, types, checked, run_id, replacing=replacing)
    if replaces_partition(spec):
        return replace_partition.collect(conn, spec, types, checked, run_id, beaten)
    if spec.pipeline.strategy == "scd2":
        assert as_of is not None, "scd2 needs the run's as-of time"
        return scd2.merge(conn, spec, types, checked, run_id, beaten, as_of)
    return keyed.merge(conn, spec, types, checked, run_id, beaten, into_empty=into_empty, upserts=upserts,
                       records=records, dedup=dedup)


def predict(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], checked: Checked,
            beaten: str | None, target_exists: bool, as_of: datetime | None = None) -> MergeCounts:
    """What `merge` would count for the batch, computed read-only (the dry run)."""
    from pgstage.pipeline.merge import append, keyed, replace_partition, scd2

    if spec.pipeline.strategy == "append":
        return append.predict(conn, spec, types, checked)
    if replaces_partition(spec):
        return replace_partition.predict(conn, spec, types, checked, beaten)
    if spec.pipeline.strategy == "scd2":
        assert as_of is not None, "scd2 needs the run's as-of time"
        return scd2.predict(conn, spec, types, checked, beaten, as_of, target_exists)
    return keyed.predict(conn, spec, types, checked, beaten, target_exists)


def resolve_rejects(conn: psycopg.Connection[Any], spec: Spec, types: dict[str, ColumnType], run_id: int,
                    collation: str | None = None) -> int:
    """Mark earlier rejects resolved by this run's rows of their key; a keyless target resolves none."""
    from pgstage.pipeline.merge import keyed

    if not spec.pipeline.key:
        return 0
    return keyed.resolve_rejects(conn, spec, types, run_id, collation)
