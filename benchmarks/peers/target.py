"""The table every peer writes, how each tool is told where it is, and the SQL checks of the result.

Every peer loads `bench.orders`. Where the tool lets us, it is the `naive` baseline's table
(typed columns, primary key on order_id, index on updated_at), created before the timed step,
so a peer's first load pays for the same indexes as `naive`, `bare_sql` and pgstage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from benchmarks import baselines
from benchmarks.data import FIRST_KEY

# The incremental file's revised rows have updated_at >= day 380 of the generator's calendar
# (2024-01-01 + 380 days); no clean row reaches it. Counting them tells an update that landed.
REVISED_SINCE = "2025-01-15"


@dataclass(frozen=True)
class Server:
    """Where one fresh database is, in the shapes the different clients accept."""

    conninfo: str           # libpq key=value string, for psycopg
    host: str               # a directory for a Unix socket, else a host name
    port: int
    user: str
    password: str
    dbname: str

    @classmethod
    def of(cls, conninfo: str) -> Server:
        with psycopg.connect(conninfo) as conn:
            info = conn.info
            return cls(conninfo, info.host, info.port, info.user, info.password or "", info.dbname)

    @property
    def socket(self) -> bool:
        return self.host.startswith("/")

    def job(self) -> dict[str, Any]:
        return {"conninfo": self.conninfo, "host": self.host, "port": self.port, "user": self.user,
                "password": self.password, "dbname": self.dbname}


def from_job(job: dict[str, Any]) -> Server:
    db = job["db"]
    return Server(db["conninfo"], db["host"], int(db["port"]), db["user"], db["password"], db["dbname"])


def libpq_url(server: Server, **params: str) -> str:
    """A postgresql:// URL; a socket directory goes in the query string, where libpq and pgx read it."""
    auth = quote(server.user, safe="") + (f":{quote(server.password, safe='')}" if server.password else "")
    if server.socket:
        query = {"host": server.host, "port": str(server.port), **params}
        return f"postgresql://{auth}@/{quote(server.dbname, safe='')}?" + "&".join(
            f"{k}={quote(v, safe='/')}" for k, v in query.items())
    tail = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())
    return f"postgresql://{auth}@{server.host}:{server.port}/{quote(server.dbname, safe='')}" + (f"?{tail}" if tail else "")


def create_naive_target(conninfo: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        baselines.setup_naive(conn)


def add_keys(conninfo: str) -> None:
    """Empty a table a tool created and give it the baselines' primary key and index."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(baselines.TARGET))
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (order_id)").format(baselines.TARGET))
        conn.execute(sql.SQL("CREATE INDEX {} ON {} (updated_at)").format(baselines.INDEX, baselines.TARGET))


def copy_clean(conninfo: str, path: Any) -> None:
    """Untimed state for a sampled peer: the whole clean file in the target, as `naive` loads it."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(baselines.TARGET))
        baselines.copy_file(conn, sql.SQL("COPY {} FROM STDIN (FORMAT csv, HEADER true)").format(baselines.TARGET), path)


def inspect(conninfo: str) -> dict[str, Any]:
    """Row count, distinct keys, revised rows, and rows no clean row could be (for the dirty file)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('bench.orders')").fetchone() == (None,):
            return {"exists": False, "rows": 0, "distinct_keys": 0, "revised": 0, "bad_as_is": 0}
        total = next(c for c in ("total", "total_cents") if conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = 'bench' AND table_name = 'orders'"
            " AND column_name = %s", (c,)).fetchone())
        row = conn.execute(sql.SQL(
            "SELECT count(*), count(DISTINCT order_id), count(*) FILTER (WHERE updated_at::timestamptz >= {since}),"
            " count(*) FILTER (WHERE {total}::numeric < 0 OR email::text NOT LIKE '%@%')"
            " FROM {target}").format(since=sql.Literal(REVISED_SINCE), total=sql.Identifier(total),
                                     target=baselines.TARGET)).fetchone()
    assert row is not None
    return {"exists": True, "rows": row[0], "distinct_keys": row[1], "revised": row[2], "bad_as_is": row[3]}


def new_key_floor(rows: int) -> int:
    """Keys at or above this are the incremental file's new keys (absent from the clean file)."""
    return FIRST_KEY + rows

