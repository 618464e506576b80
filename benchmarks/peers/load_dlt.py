"""dlt: the postgres destination, `write_disposition="merge"` on primary key order_id.

The file is read by pyarrow's streaming CSV reader and handed to dlt as Arrow record
batches: dlt's documented fast path (Arrow items skip its per-row normalization; with the
parquet format the extracted files go to the loader unchanged, with csv pyarrow rewrites
them). The column types are given, as a user who knows the file would: order_id int64,
total decimal(12,2), the two timestamps UTC. `dedup_sort` on updated_at makes the merge keep
a key's newest row within a load; dlt has no "only if newer than the target" guard.

Formats: `parquet` is copied by the ADBC PostgreSQL driver (binary COPY), `csv` by psycopg2
COPY, `insert_values` (dlt's default for postgres) by multi-row INSERT statements.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import dlt
import pyarrow as pa
import pyarrow.csv as pa_csv

from benchmarks.peers import target

BLOCK_BYTES = 16 << 20          # about 150,000 rows per record batch
COLUMN_TYPES = {"order_id": pa.int64(), "total": pa.decimal128(12, 2),
                "created_at": pa.timestamp("us", tz="UTC"), "updated_at": pa.timestamp("us", tz="UTC")}


def _batches(path: str) -> Iterator[pa.RecordBatch]:
    with pa_csv.open_csv(path, read_options=pa_csv.ReadOptions(block_size=BLOCK_BYTES),
                         convert_options=pa_csv.ConvertOptions(column_types=COLUMN_TYPES)) as reader:
        yield from reader


def credentials(server: target.Server) -> dict[str, Any]:
    """dlt wants a host and a password; a socket directory rides in the query, where libpq takes it over the host."""
    creds: dict[str, Any] = {"database": server.dbname, "username": server.user,
                             "password": server.password or "unused-trust-auth", "port": server.port}
    if server.socket:
        return {**creds, "host": "localhost", "query": {"host": server.host}}
    return {**creds, "host": server.host}


def load(job: dict[str, Any]) -> dict[str, Any]:
    orders = dlt.resource(_batches(job["file"]), name="orders", write_disposition="merge", primary_key="order_id",
                          columns={"updated_at": {"dedup_sort": "desc"}})
    pipeline = dlt.pipeline(pipeline_name=f"peers_{job['peer']}", pipelines_dir=job["options"]["pipelines_dir"],
                            destination=dlt.destinations.postgres(credentials=credentials(target.from_job(job))),
                            dataset_name="bench")
    info = pipeline.run(orders, loader_file_format=job["options"]["format"])
    info.raise_on_failed_jobs()
    return {"tool_output": f"{len(info.loads_ids)} load package(s)"}
