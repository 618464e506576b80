"""The peers, what each one runs, and whether this machine has it.

Checked without importing anything heavy: the parent process never imports dlt, pandas or
pyarrow, so a missing package costs one skipped line and the parent's RSS stays meaningless.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Any

STEPS = ("initial", "again", "incremental", "dirty")
EXTRA = "pip install -e '.[peers]'"
APT = "apt-get install -y pgloader"


def sling_module() -> str:
    """The Sling platform wheel's module name (sling-linux-amd64 ships sling_linux_amd64)."""
    system = {"Darwin": "mac", "Windows": "windows"}.get(platform.system(), "linux")
    machine = "arm64" if platform.machine().lower() in ("arm64", "aarch64") else "amd64"
    return f"sling_{system}_{machine}"


@dataclass(frozen=True)
class Peer:
    """One way of loading the files with another tool.

    target: "naive" = the naive baseline's table is created first; "seeded" = the tool creates
    its own table from a 10-row file, which is then emptied and given the baselines' primary
    key and index; "own" = the tool makes (and remakes) the table itself.
    """

    key: str
    label: str
    loader: str                        # module of benchmarks.peers whose load(job) the child times
    steps: tuple[str, ...]
    upserts: bool
    target: str
    modules: tuple[str, ...] = ()      # Python modules it needs
    programs: tuple[str, ...] = ()     # executables it needs on PATH
    install: str = EXTRA
    options: dict[str, Any] = field(default_factory=dict)
    sampled: bool = False

    def missing(self) -> str | None:
        """None when runnable, else a one-line reason with the install command."""
        absent = [m for m in self.modules if importlib.util.find_spec(m) is None]
        absent += [p for p in self.programs if shutil.which(p) is None]
        return f"{', '.join(absent)} not installed ({self.install})" if absent else None


_DLT = ("dlt", "psycopg2", "pyarrow")
PEERS: tuple[Peer, ...] = (
    Peer("dlt_parquet", "dlt merge, parquet (ADBC)", "load_dlt", STEPS, True, "seeded",
         (*_DLT, "adbc_driver_postgresql"), options={"format": "parquet"}),
    Peer("dlt_csv", "dlt merge, csv (COPY)", "load_dlt", STEPS, True, "seeded", _DLT, options={"format": "csv"}),
    Peer("dlt_insert_values", "dlt merge, insert_values", "load_dlt", ("initial",), True, "seeded", _DLT,
         options={"format": "insert_values"}),
    Peer("sling_incremental", "Sling incremental pk+update_key", "load_sling", STEPS, True, "naive",
         (sling_module(),), options={"mode": "incremental", "primary_key": "order_id", "update_key": "updated_at"}),
    Peer("sling_upsert_pk", "Sling incremental pk only", "load_sling", ("initial", "again", "incremental"), True,
         "naive", (sling_module(),), options={"mode": "incremental", "primary_key": "order_id"}),
    Peer("sling_full_refresh", "Sling full-refresh", "load_sling", ("initial",), False, "own",
         (sling_module(),), options={"mode": "full-refresh"}),
    Peer("pandas_copy", "pandas to_sql, COPY method", "load_pandas", ("initial", "again", "dirty"), False, "naive",
         ("pandas", "sqlalchemy")),
    Peer("pgloader", "pgloader CSV", "load_pgloader", ("initial", "again", "dirty"), False, "naive",
         programs=("pgloader",), install=APT),
    Peer("psycopg_executemany", "psycopg executemany upsert", "load_executemany", STEPS, True, "naive",
         sampled=True),
)


def versions() -> dict[str, str]:
    """Versions of every peer tool found, for the JSON and the report header."""
    out: dict[str, str] = {}
    for dist in ("dlt", "pyarrow", "adbc-driver-postgresql", "pandas", "sqlalchemy", "psycopg", "psycopg2-binary",
                 sling_module().replace("_", "-")):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    if shutil.which("pgloader"):
        proc = subprocess.run(["pgloader", "--version"], capture_output=True, text=True, timeout=60)
        out["pgloader"] = (proc.stdout.strip().splitlines() or ["?"])[0]
    return out
