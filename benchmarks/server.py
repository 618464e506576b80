"""The PostgreSQL the benchmarks run on, and the facts about it that belong next to any number."""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from pgstage.embedded import _wheel

SETTINGS = ("shared_buffers", "work_mem", "maintenance_work_mem", "max_wal_size", "checkpoint_timeout",
            "synchronous_commit", "fsync", "wal_level", "max_parallel_workers_per_gather", "jit")


@contextmanager
def embedded() -> Iterator[str]:
    """A throwaway server in a temp dir (initdb defaults), stopped and deleted on exit."""
    base = Path(tempfile.mkdtemp(prefix="pgstage-bench-"))
    server = _wheel().get_server(base / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def code_fingerprint() -> str:
    """sha256 of pgstage's Python sources: others edit the package, so a run must say which code it timed."""
    import hashlib

    package = Path(__file__).resolve().parent.parent / "pgstage"
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def facts(url: str) -> dict[str, Any]:
    """Machine and server facts printed above the results and stored in the JSON."""
    import psutil

    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        settings = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in SETTINGS}  # type: ignore[index]
    return {
        "cores_logical": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "postgresql": version[0] if version else None,
        "settings": settings,
    }
